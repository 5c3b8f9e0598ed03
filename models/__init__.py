"""s7 networks (registered in timm on import), their blocks, receptive field and rule checker."""
from models import candidates  # noqa: F401  (issue 9 candidates: registered for comparison runs, not shipped)
from models.nets import S7Net  # noqa: F401  (importing it registers the shipped nets with timm)
from models.registry import registered, shipped

MODEL_NAMES = shipped()  # the nets with shipped weights: s7, s7_strided, s7_dilated
ALL_NAMES = registered()  # every net registered here, the candidates included
