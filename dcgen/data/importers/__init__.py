"""Dataset importers (SPEC §1): CarlaSC, Occ3D-nuScenes and Occ3D-Waymo on disk -> scene store clips.

One module per source format (``carlasc``, ``occ3d_nuscenes``, ``occ3d_waymo``) reads and checks files; ``windows``
cuts clips and derives their side information; ``driver`` runs both on Ray and writes the store.
"""

from dcgen.data.importers.driver import DATASETS, ImportConfig, ImportResult, import_dataset

__all__ = ["DATASETS", "ImportConfig", "ImportResult", "import_dataset"]
