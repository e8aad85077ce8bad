"""Seeded generator of realistic demo depots (captures, manifests, references, labels) and paired-folder datasets.

Nothing here is a real photograph of a train, but every image is built from real photographic texture and
drawn, shaded parts, then degraded by the nuisances a robot camera meets between nights, so that a
change-detection network trained or demonstrated on it has to cope with the same difficulties as on site.

Each region ``(train, car, region)`` has one canonical scene (:class:`RegionScene`): real textures tinted to a
dirty undercarriage, under analytically shaded parts (beams, plates, pipes, brackets, cables, bolts). Each capture
of a night is the canonical scene, plus an optional anomaly (``foreign_body``, ``missing_component``, ``scratch``,
``oil_leak``), seen through the nuisance model (viewpoint, illumination, blur, sensor noise), then JPEG at
``DemoSpec.jpeg_quality``. The pinned reference of a region has a neutral viewpoint, neutral light and low noise.
Masks are 8-bit PNG (0/255) at the capture's native size, in the cur frame.

Everything is seeded: the same spec gives byte-identical files.

Modules
-------
``_writer`` :func:`generate_depot` (a depot into a store); ``_pairs`` :func:`write_pair_folders`; ``_spec``
:class:`DemoSpec` and :class:`DemoSummary`; ``_ids`` train, region and capture ids; ``_seeding`` keyed generators,
the anomaly plan and capture times; ``_scene`` :class:`RegionScene`; ``_background``, ``_layout`` (which parts,
where) and ``_parts`` (how a part is drawn) its canonical scene; ``_nuisance`` viewpoint, illumination and noise;
``_anomalies`` (with ``_foreign`` and ``_missing``) the anomalies; ``_textures``, ``_geometry``, ``_raster`` and
``_shading`` their helpers; ``_encode`` JPEG; ``_constants`` anomaly kinds, texture names and colours.
"""

from ._constants import ANOMALY_TYPES, FOREIGN_KINDS
from ._encode import encode_jpeg
from ._ids import capture_id, region_ids, train_ids
from ._pairs import write_pair_folders
from ._scene import RegionScene
from ._seeding import _rng
from ._shading import shade
from ._spec import DemoSpec, DemoSummary
from ._writer import generate_depot

__all__ = [
    "ANOMALY_TYPES",
    "FOREIGN_KINDS",
    "DemoSpec",
    "DemoSummary",
    "RegionScene",
    "_rng",  # keyed generators, used by the tests to drive RegionScene.render
    "capture_id",
    "encode_jpeg",
    "generate_depot",
    "region_ids",
    "shade",
    "train_ids",
    "write_pair_folders",
]
