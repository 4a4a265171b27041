"""The model, the encoder and the benchmarks import without the data libraries (a GPU image may have only
torch, transformers and peft), and importing the package does no work."""
import subprocess
import sys

from conftest import ROOT

BLOCKED = ["datasets", "pyarrow", "deepspeed", "sentence_transformers", "mteb", "scipy", "tensorboard"]


def test_model_encoder_and_benchmarks_import_without_data_libraries():
    code = ("import sys\n"
            f"for m in {BLOCKED!r}: sys.modules[m] = None\n"
            "import trainer.modeling.build, trainer.modeling.compressor, trainer.modeling.packing, trainer.serving.encoder\n"
            "import trainer.objectives.compression, trainer.objectives.mntp, trainer.engine.gradcache\n"
            "import trainer.stages.pretrain, trainer.stages.contrast\n"
            f"sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
            "import trainstep.engines, trainstep.reference, trainstep.synthetic, trainstep.measure, train_step\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_importing_the_package_loads_no_heavy_library():
    code = "import sys, trainer, data_prep, trainer.cli; print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr[-1000:]


def test_training_does_not_import_the_serving_side():
    """Two rooms: the stages, engine and objectives train without loading export / Encoder / evaluation."""
    code = ("import sys\n"
            "import trainer.stages.pretrain, trainer.stages.contrast, trainer.engine.loop, trainer.objectives.compression\n"
            "print(sorted(m for m in sys.modules if m.startswith('trainer.serving')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr[-1000:]
