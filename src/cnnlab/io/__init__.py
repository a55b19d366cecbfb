"""Reading and writing files: one home each for atomic writes, JSON, images, caches, cnnlab checkpoints and progress.

Submodules, imported directly (``from cnnlab.io.files import write_json``):

- ``files``: atomic writes of files and directories (temp beside the target, fsync, rename) and JSON.
- ``images``: reading user images (any PIL mode, EXIF orientation; ``skimage:`` photos), ``IMAGE_SUFFIXES``, the one
  resize, PNG and matplotlib-figure writing.
- ``cache``: ``keyed_cache``, the one "load a keyed .pt or compute and save it" (a damaged file is recomputed).
- ``checkpoints``: ``read_cnnlab_file``, the one ``torch.load`` for cnnlab's own files (CRC-checked), and
  ``AtomicCheckpointIO``, the trainer's checkpoint writer.
- ``progress``: the one optional progress-bar wrapper.
"""
