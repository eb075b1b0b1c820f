"""The door runtime: where a frame becomes a decision.

Capture (:mod:`.capture`) feeds each door's loop (:mod:`.loop`); faces are
followed across frames (:mod:`.tracking`) and decided on per track
(:mod:`.decisions`); the runner (:mod:`.runner`) starts and watches every door
and shares one encoder between them (:mod:`.batching`).
"""
