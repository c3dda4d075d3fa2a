"""PSSR library shared by the numbered pipeline scripts."""
import warnings

# fastai/torch import chatter that says nothing about the user's data.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|fastai|pandas|fastcore)(\.|$)")
warnings.filterwarnings("ignore", message=r".*torch\.jit.*")
warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.(jit|_jit_internal)")
