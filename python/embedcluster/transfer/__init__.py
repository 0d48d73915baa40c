"""Transfer from a pretrained model to clusters and a deployable predictor.

:mod:`.models` (small encoders rebuilt from a JSON config), :mod:`.pretrain` (make an encoder
when none is at hand: supervised or self-supervised), :mod:`.probe` (linear probe on
pseudo-labels or true labels), :mod:`.pipeline` (encoder + clusterer + probe: fit, predict,
save, load), :mod:`.report` (HTML and JSON report), :mod:`.heads` (SCAN / TEMI clustering heads)
and :mod:`.select` (label-free choice of representation, k and method). Each is also importable at its public
path (``embedcluster.pipeline``, ``embedcluster.probe``, ...); submodules are imported on use,
so importing this package does not import torch.
"""
