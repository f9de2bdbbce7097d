"""From labelled folders to training batches: labels (``ingest``), one validated folder per source
(``sources``), duplicates (``dedup``), the patient-level split (``split``), deterministic preprocessing
(``fundus_crop``, ``preprocess``), the on-disk cache (``cache``, ``contact_sheet``), datasets,
augmentation and loaders."""
