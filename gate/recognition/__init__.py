"""Faces to people: the pipeline, calibration and quality, and the science under them.

:mod:`.pipeline` runs detector, encoder and matcher and judges a face against
the calibrated threshold (:mod:`.calibration`, :mod:`.quality`). The networks
(:mod:`.nn`), metric learning (:mod:`.metric`) and evaluation
(:mod:`.evaluation`, :mod:`.lfw`) are the torch side, imported only by the
plugins and commands that need them.
"""
