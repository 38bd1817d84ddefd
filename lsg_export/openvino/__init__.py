"""OpenVINO as a runtime of the exported encoders (the optional `openvino` and `nncf` packages,
`pip install 'lsg-export[openvino]'`): what the CPU supports and how a graph is compiled (runtime.py), int8
weights with activations quantized at run time (weights.py), and `lsg-export openvino`, an export's gather
graph as an OpenVINO IR folder validated against PyTorch (export.py)."""
