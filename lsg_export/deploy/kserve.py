"""The KServe InferenceService that serves a Triton repository, built from the KServe SDK's models."""
import math
import sys

from ..errors import LSGExportError

RUNTIME = "kserve-tritonserver"  # KServe's ClusterServingRuntime for Triton (formats include onnx)
MIN_REPLICAS, MAX_REPLICAS = 1, 4


def import_kserve():
    """The kserve package. Its model_server module parses sys.argv when imported (its own server
    flags): it is imported with the program name only, so that our options never reach that parser."""
    if "kserve" in sys.modules:
        return sys.modules["kserve"]
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        import kserve
    except ImportError:
        raise LSGExportError("this needs the KServe SDK: pip install 'lsg-export[serve]'") from None
    except TypeError as error:  # protobuf: "duplicate symbol 'inference.ServerLiveRequest'"
        raise LSGExportError("kserve cannot be imported in a process that imported tritonclient.grpc (both register "
                             f"the inference protocol's protobuf messages: kserve/kserve#3099): {error}") from None
    finally:
        sys.argv = argv
    return kserve


def _quantity_mi(mebibytes):
    """A Kubernetes memory quantity, rounded up to 256 Mi."""
    return f"{int(math.ceil(mebibytes / 256) * 256)}Mi"


def resources(model_bytes, instances, device):
    """Requests / limits for one replica: a core per instance; memory for each instance's copy of the
    weights twice over (ONNX Runtime's initializers + its arena) plus 1 GiB of activations at long lengths."""
    from kubernetes.client import V1ResourceRequirements

    memory = instances * (2 * model_bytes / 2**20 + 1024)
    requests = {"cpu": str(instances), "memory": _quantity_mi(memory)}
    limits = {"cpu": str(2 * instances), "memory": _quantity_mi(2 * memory)}
    if device == "gpu":
        limits["nvidia.com/gpu"] = "1"
    return V1ResourceRequirements(requests=requests, limits=limits)


def inference_service(name, *, storage_uri, model_bytes, instances=1, device="cpu", max_batch_size=8,
                      model_format="onnx"):
    """A V1beta1InferenceService: Triton runtime, `model_format` ("onnx", or "triton" for a repository of
    several models and backends), Open Inference Protocol v2,
    autoscaled between MIN_REPLICAS and MAX_REPLICAS on concurrency (target: what one replica runs at once)."""
    kserve = import_kserve()
    from kubernetes.client import V1ObjectMeta

    predictor = kserve.V1beta1PredictorSpec(
        min_replicas=MIN_REPLICAS, max_replicas=MAX_REPLICAS, scale_metric="concurrency",
        scale_target=instances * max(1, max_batch_size),
        model=kserve.V1beta1ModelSpec(
            name="kserve-container", model_format=kserve.V1beta1ModelFormat(name=model_format), runtime=RUNTIME,
            protocol_version="v2",
            storage_uri=storage_uri, resources=resources(model_bytes, instances, device)))
    return kserve.V1beta1InferenceService(
        api_version=kserve.constants.KSERVE_V1BETA1, kind=kserve.constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(name=name, labels={"app.kubernetes.io/created-by": "lsg-export"}),
        spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor))


def to_yaml(service, header=""):
    """The manifest as YAML (the SDK's own camelCase serialisation), after `header` comment lines."""
    import yaml

    data = import_kserve().ApiClient().sanitize_for_serialization(service)
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    return comments + yaml.safe_dump(data, sort_keys=False)


def from_yaml(text):
    """YAML -> V1beta1InferenceService through the SDK's deserialiser (it checks required fields).

    KServe's ApiClient resolves type names in kserve.models only, while its models hold Kubernetes
    types (V1ObjectMeta, V1ResourceRequirements): those are looked up in kubernetes.client.models,
    whose generator spells maps dict[str, str] (newer kubernetes clients write Dict[str, str] and List[...]) where
    KServe's parser wants dict(str, str) and list[...]."""
    import json

    import yaml
    from kubernetes.client import models as k8s_models

    kserve = import_kserve()

    class ManifestClient(kserve.ApiClient):
        def _ApiClient__deserialize(self, data, klass):  # the (name-mangled) private resolver
            if isinstance(klass, str) and klass[:5] in ("dict[", "Dict[") and klass.endswith("]"):
                klass = f"dict({klass[5:-1]})"
            elif isinstance(klass, str) and klass.startswith("List[") and klass.endswith("]"):
                klass = f"list[{klass[5:-1]}]"
            elif isinstance(klass, str) and not hasattr(kserve.models, klass) and hasattr(k8s_models, klass):
                klass = getattr(k8s_models, klass)
            return super()._ApiClient__deserialize(data, klass)

    class Response:  # what ApiClient.deserialize reads: a body with .data
        data = json.dumps(yaml.safe_load(text))

    return ManifestClient().deserialize(Response(), "V1beta1InferenceService")
