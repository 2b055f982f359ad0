# Setup: install mlcourse if it is missing (as in Colab), then budget, device, figures.
import importlib.util, os, subprocess, sys
if importlib.util.find_spec("mlcourse") is None:
    source = os.environ.get("MLCOURSE_INSTALL_SOURCE",
                            "mlcourse @ git+https://github.com/mlcourse/mlcourse")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], check=True)
    importlib.invalidate_caches()
import mlcourse.notebook
budget, device = mlcourse.notebook.setup(data=("omniglot",))
