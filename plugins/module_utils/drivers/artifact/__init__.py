# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Versioned, reproducible, immutable service artifacts.

- ``spec``: ArtifactSpec and its validation, the build flags, the generated version.json, ArtifactError
- ``render``: the members of a source tree, the reproducible tarball, its content manifest
- ``verify``: sha256sum lines and verify_artifact
- ``store``: ArtifactBuilder (present/absent, immutability, atomic files)
"""
