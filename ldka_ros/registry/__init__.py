"""
Model registry: published model versions, their digests and the active pointer.

No ROS imports; the learner publishes here and the segmentation node loads from here.
"""
from ldka_ros.registry.manifest import (
    ArtefactEntry, MANIFEST_SCHEMA, sha256_file, VersionManifest,
)
from ldka_ros.registry.registry import (
    BrokenVersion, DigestMismatchError, ModelRegistry, RegistryError, VersionNotFoundError,
)

__all__ = [
    'ArtefactEntry', 'BrokenVersion', 'DigestMismatchError', 'MANIFEST_SCHEMA', 'ModelRegistry',
    'RegistryError', 'sha256_file', 'VersionManifest', 'VersionNotFoundError',
]
