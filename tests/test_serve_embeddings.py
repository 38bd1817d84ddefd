"""`lsg-export serve` as an OpenAI-compatible embedding server, called with the `openai` client as users call it,
against a direct ONNX Runtime run of the same export (_deploy_cases.embedding_export: tiny bert, mean pooling,
Normalize): float and base64 answers, packing by the token budget (results equal to single runs), every bad
request a 4xx with one line while the server keeps serving, the body-size and concurrency limits, --truncate,
and the Prometheus metrics."""
import asyncio
import base64
import threading
import time
import urllib.request

import _deploy_cases as cases
import numpy as np
import pytest

pytest.importorskip("kserve")
openai = pytest.importorskip("openai")
from test_serve import NAME, Server  # noqa: E402

BODY_LIMIT = 200_000


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return cases.embedding_export(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(export, tmp_path_factory):
    server = Server(export, tmp_path_factory.mktemp("serve-embeddings") / "server.log",
                    "--max-request-bytes", str(BODY_LIMIT))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def direct(export):
    """text -> (its embedding from ONNX Runtime, run alone and unpadded; its token count)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(export / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def embed(text):
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        return session.run(["sentence_embedding"], feeds)[0][0], ids.shape[1]
    return embed


def mixed_texts(count, seed):
    """Texts of 1 to 62 tokens (+ [CLS] and [SEP]: at most the export's 64)."""
    rng = np.random.default_rng(seed)
    return [" ".join(f"w{i}" for i in rng.integers(0, 95, rng.integers(1, 63))) for _ in range(count)]


def check(embeddings, texts, direct, atol=1e-5):
    for got, text in zip(embeddings, texts, strict=True):
        got = np.asarray(got, dtype=np.float64)
        expected = direct(text)[0].astype(np.float64)
        cosine = got @ expected / (np.linalg.norm(got) * np.linalg.norm(expected))
        assert cosine >= 0.99999 and np.abs(got - expected).max() <= atol, (text, cosine)


@pytest.mark.quick
def test_openai_client_embeddings_equal_onnx_runtime(client, direct):
    texts = mixed_texts(7, seed=1)
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    default = client.embeddings.create(model=NAME, input=texts)  # the client asks base64 and decodes it
    check([d.embedding for d in default.data], texts, direct)
    assert [d.index for d in default.data] == list(range(7)) and default.model == NAME
    tokens = sum(direct(t)[1] for t in texts)
    assert default.usage.prompt_tokens == default.usage.total_tokens == tokens
    floats = client.embeddings.create(model=NAME, input=texts, encoding_format="float", dimensions=32)
    check([d.embedding for d in floats.data], texts, direct)
    assert all(len(d.embedding) == 32 for d in floats.data)
    raw = client.embeddings.create(model=NAME, input=texts[0], encoding_format="base64")
    vector = np.frombuffer(base64.b64decode(raw.data[0].embedding), dtype="<f4")
    assert vector.shape == (32,)
    check([vector], texts[:1], direct)
    assert abs(np.linalg.norm(vector) - 1) < 1e-6  # the checkpoint's Normalize module, in the graph
    ids = client.embeddings.create(model=NAME, input=[[2, 10, 11, 3], [2, 12, 3]], encoding_format="float")
    assert ids.usage.prompt_tokens == 7 and len(ids.data) == 2


def test_concurrent_clients_packed_equal_single_runs(server, client, direct):
    """8 clients x 6 requests of 1..5 texts of mixed lengths, packed into shared runs: each answer equals the
    text's own unpadded run within 1e-5."""
    before = scrape(server)
    failures = []

    def work(c):
        for i in range(6):
            texts = mixed_texts(1 + (c + i) % 5, seed=100 * c + i)
            try:
                check([d.embedding for d in client.embeddings.create(model=NAME, input=texts).data], texts, direct)
            except Exception as error:  # reported below
                failures.append(repr(error))

    threads = [threading.Thread(target=work, args=(c,)) for c in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    after = scrape(server)
    rows = after["lsg_batch_rows_sum"] - before["lsg_batch_rows_sum"]
    runs = after["lsg_batch_rows_count"] - before["lsg_batch_rows_count"]
    # runs held several rows of different lengths (rows of one 8-token block of the tiny export share a run;
    # that rows of concurrent requests share runs is test_batcher_packs_concurrent_requests_by_length's)
    assert rows == sum(1 + (c + i) % 5 for c in range(8) for i in range(6)) and runs < rows, (rows, runs)


def bad_requests():
    """(create() arguments, expected exception, fragment of its message)."""
    long_text = " ".join(["w7"] * 70)
    return [
        (dict(input=""), openai.BadRequestError, "input 0 is an empty string"),
        (dict(input=[]), openai.BadRequestError, "input is an empty list"),
        (dict(input=["w1", 5.5]), openai.BadRequestError, "input 1 is a number, not a string or a list of token ids"),
        (dict(input={"text": "w1"}), openai.BadRequestError, "input must be a string or a list of strings"),
        (dict(input=[[2, 500]]), openai.BadRequestError, "input 0 has token ids outside 0..99 (500)"),
        (dict(input="w1", model="other"), openai.NotFoundError, "model 'other' does not exist"),
        (dict(input="w1", encoding_format="hex"), openai.BadRequestError, "encoding_format 'hex' is not one of"),
        (dict(input="w1", dimensions=16), openai.BadRequestError, "dimensions 16: model tiny gives 32"),
        (dict(input=["w1", long_text]), openai.BadRequestError, "input 1 is 72 tokens long, longer than 64"),
        (dict(input=["w1"] * 2049), openai.BadRequestError, "input has 2049 items, more than 2048"),
        (dict(input=[long_text] * 1000), openai.APIStatusError, f"larger than {BODY_LIMIT} bytes"),
    ]


@pytest.mark.quick
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, client, direct):
    before = scrape(server)
    for arguments, error, fragment in bad_requests():
        with pytest.raises(error) as raised:
            client.embeddings.create(**{"model": NAME, "encoding_format": "float", **arguments})
        assert fragment in raised.value.message and "\n" not in raised.value.message, raised.value.message
        assert 400 <= raised.value.status_code < 500
        check([client.embeddings.create(model=NAME, input="w1 w2").data[0].embedding], ["w1 w2"], direct)
    after = scrape(server)
    codes = {code: after.get(f'lsg_request_errors_total{{code="{code}",endpoint="embeddings"}}', 0)
             - before.get(f'lsg_request_errors_total{{code="{code}",endpoint="embeddings"}}', 0)
             for code in ("400", "404", "413")}
    assert codes == {"400": 9, "404": 1, "413": 1}
    requests = 'lsg_requests_total{endpoint="embeddings"}'
    assert after[requests] - before[requests] == 2 * len(bad_requests())
    assert after["lsg_queue_depth"] == 0 and after['lsg_request_seconds_count{endpoint="embeddings"}'] > 0
    assert server.process.poll() is None


def scrape(server):
    """The server's lsg_* samples: {name{labels}: value}."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://{server.url}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("lsg_") and "le" not in sample.labels:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_truncate_cuts_to_the_export_length(export):
    from lsg_export.deploy.embeddings import Embedder, EmbeddingInputError, ServingOptions
    from lsg_export.deploy.server import make_model
    model = make_model(export, NAME)
    long_text = " ".join(f"w{i % 95}" for i in range(100))
    with pytest.raises(EmbeddingInputError, match="input 0 is 102 tokens long, longer than 64"):
        Embedder(model, ServingOptions()).token_rows(long_text)
    cut = Embedder(model, ServingOptions(truncate=True))
    rows = cut.token_rows([long_text, list(range(5, 90))])
    assert [len(row) for row in rows] == [64, 64]
    assert rows[0][0] == 2 and rows[0][-1] == 3 and rows[1] == list(range(5, 69))  # [CLS] ... [SEP]; ids as sent
    assert np.abs(cut.run(rows[:1]) - cut.run([rows[0]] + [[2, 5, 3]])[:1]).max() <= 1e-5


def test_short_rows_run_on_the_short_graph(export, direct):
    """Rows of at most two blocks (16 tokens here) run on model_short.onnx, grouped by 16 tokens; longer rows on
    model.onnx, grouped by block count; either way within 1e-5 of model.onnx run alone. (The v2 /infer path
    takes the same LSGModel.session: test_v2_infer_of_a_short_text_runs_the_short_graph.)"""
    from lsg_export.deploy.embeddings import Embedder, ServingOptions
    from lsg_export.deploy.server import make_model
    model = make_model(export, NAME)
    embedder = Embedder(model, ServingOptions())
    assert model.short_limit == 16
    assert [embedder.group(n) for n in (1, 16, 17, 24, 25)] == [("short", 1), ("short", 1), ("blocks", 3),
                                                                  ("blocks", 3), ("blocks", 4)]
    texts = ["w1", "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14", " ".join(f"w{i}" for i in range(30))]
    rows = embedder.token_rows(texts)
    assert [len(row) for row in rows] == [3, 16, 32]
    calls = []
    model._short_session = CountingSession(model._short_session, "short", calls)
    model._session = CountingSession(model._session, "model.onnx", calls)
    short_pair = embedder.run(rows[:2])
    long_row = embedder.run(rows[2:])
    assert calls == ["short", "model.onnx"]
    check([*short_pair, *long_row], texts, direct)


def test_v2_infer_of_a_short_text_runs_the_short_graph(export, direct):
    """The KServe v2 path (LSGModel.run) takes the same choice: a request of at most 16 tokens runs
    model_short.onnx, a longer one model.onnx, with model.onnx's answers."""
    from kserve import InferInput, InferRequest

    from lsg_export.deploy.server import make_model
    model = make_model(export, NAME)
    calls = []
    model._ensure_loaded()
    model._short_session = CountingSession(model._short_session, "short", calls)
    model._session = CountingSession(model._session, "model.onnx", calls)
    texts = ["w1 w2 w3", " ".join(f"w{i}" for i in range(20))]
    for text in texts:
        request = InferRequest(NAME, [InferInput("text", [1], "BYTES", [text])])
        check([model.run(request)["sentence_embedding"][0]], [text], direct)
    assert calls == ["short", "model.onnx"]


class CountingSession:
    """An ONNX Runtime session that records its name at each run."""

    def __init__(self, session, name, calls):
        self.session, self.name, self.calls = session, name, calls

    def run(self, *args):
        self.calls.append(self.name)
        return self.session.run(*args)


class Recorder:
    """A batcher's run function that records the rows of each run and embeds a row as [its length]."""

    def __init__(self):
        self.runs = []

    def __call__(self, rows):
        self.runs.append([len(row) for row in rows])
        return np.array([[len(row)] for row in rows], dtype=np.float32)


@pytest.mark.quick
def test_batcher_packs_concurrent_requests_by_length():
    from lsg_export.deploy.embeddings import TokenBudgetBatcher, pack
    assert pack([5, 30, 6, 29, 7], 90) == [[0, 2, 4], [3, 1]]  # 3 x 7 <= 90, then 2 x 30
    assert pack([100, 3], 50) == [[1], [0]]  # a row over the budget runs alone
    assert pack([5, 30, 6, 29, 7, 40], 900, lambda n: -(-n // 16)) == [[0, 2, 4], [3, 1], [5]]  # one group a batch
    requests = [[[1] * n for n in lengths] for lengths in ([5, 30], [6], [29, 7, 300])]

    async def send(batcher):
        return await asyncio.gather(*(batcher.embed(rows) for rows in requests))

    recorder = Recorder()
    answers = asyncio.run(send(TokenBudgetBatcher(recorder, 90)))
    assert recorder.runs == [[5, 6, 7], [29, 30], [300]]  # three requests, packed across by length
    assert [a[:, 0].tolist() for a in answers] == [[5, 30], [6], [29, 7, 300]]  # each answer in its order
    alone = Recorder()
    asyncio.run(send(TokenBudgetBatcher(alone, 0)))  # batching off: each request its own run
    assert sorted(alone.runs) == sorted([[5, 30], [6], [29, 7, 300]])


def test_batcher_answers_each_request_when_its_rows_are_back():
    """Continuous batching: rows that arrive during a run are packed before the next one, the batch of the
    oldest waiting row runs first, and a request is answered as soon as its own rows are back."""
    from lsg_export.deploy.embeddings import TokenBudgetBatcher
    gate, ends, answered = threading.Event(), [], {}
    recorder = Recorder()

    def run(rows):
        gate.wait(10)  # the first run holds until the later requests are waiting
        time.sleep(0.3)  # a run long enough for the loop to hand over the answers of the one before
        ends.append(time.monotonic())
        return recorder(rows)

    async def scenario():
        batcher = TokenBudgetBatcher(run, 90)

        def send(name, rows):
            task = asyncio.ensure_future(batcher.embed(rows))
            task.add_done_callback(lambda _: answered.setdefault(name, time.monotonic()))
            return task
        first = send("first", [[1] * 5])
        await asyncio.sleep(0.1)  # its run has started
        later = [send("long", [[1] * 300]), send("pair", [[1] * 6, [1] * 7])]
        await asyncio.sleep(0.1)
        gate.set()
        return await first, await asyncio.gather(*later)

    first, later = asyncio.run(scenario())
    assert recorder.runs == [[5], [300], [6, 7]]  # 300 arrived first: its batch runs before the shorter rows'
    # each request answered while the next run was still going, not at the end of a round
    assert ends[0] <= answered["first"] < ends[1] <= answered["long"] < ends[2] <= answered["pair"]
    assert first[:, 0].tolist() == [5] and [a[:, 0].tolist() for a in later] == [[300], [6, 7]]


@pytest.mark.quick
def test_request_limits_413_and_429():
    from lsg_export.deploy.http_limits import RequestLimits

    release = asyncio.Event()

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    def call(limits, path, chunks, length=True):
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                    for i, c in enumerate(chunks)]
        headers = [(b"content-length", str(sum(map(len, chunks))).encode())] if length else []
        sent = []

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)
        scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
        return limits(scope, receive, send), sent

    async def scenario():
        limits = RequestLimits(app, max_request_bytes=10, max_concurrent_requests=1)
        first, first_sent = call(limits, "/v1/embeddings", [b"12345", b"6789"], length=False)
        task = asyncio.ensure_future(first)
        await asyncio.sleep(0)
        busy, busy_sent = call(limits, "/v1/embeddings", [b"1"])
        await busy
        release.set()
        await task
        big, big_sent = call(limits, "/v2/models/m/infer", [b"123456", b"789012"], length=False)
        await big
        declared, declared_sent = call(limits, "/v1/embeddings", [b"x" * 11])
        await declared
        return first_sent, busy_sent, big_sent, declared_sent

    first, busy, big, declared = asyncio.run(scenario())
    assert first[0]["status"] == 200 and first[1]["body"] == b"123456789"  # a chunked body replayed whole
    assert busy[0]["status"] == 429 and b"--max-concurrent-requests" in busy[1]["body"]
    assert big[0]["status"] == 413 and big[1]["body"] == b'{"error":"request body larger than 10 bytes ' \
                                                         b'(--max-request-bytes)"}'  # KServe's error format
    assert declared[0]["status"] == 413 and b'"message":"request body larger than 10' in declared[1]["body"]
