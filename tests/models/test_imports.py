import subprocess
import sys


def test_models_imports_neither_torch_nor_fastapi_nor_onnx() -> None:
    code = (
        "import sys, models, models.bundle, models.calibration, models.preprocessing\n"
        "import models.registry, models.testing\n"
        "bad = {'torch', 'fastapi', 'onnx', 'onnxruntime'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
