"""s7 networks (registered in timm on import), their blocks, receptive field and rule checker."""
from models import candidates  # noqa: F401  (issue 9 candidates: registered for comparison runs, not shipped)
from models.nets import S7Net, s7, s7_dilated, s7_strided  # noqa: F401  (registers with timm)

MODEL_NAMES = ("s7", "s7_strided", "s7_dilated")
