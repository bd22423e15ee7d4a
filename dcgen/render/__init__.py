"""Pictures of occupancy clips (SPEC §4 renders): bird's-eye and oblique 3D voxel views with the class colours, clip
GIF/PNG panels with a legend and frame counter, side-by-side comparisons, and fast batched renders that feed the 2D
generation metrics. numpy + Pillow only; nothing needs a display."""
