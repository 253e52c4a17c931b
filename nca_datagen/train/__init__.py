"""A lightweight trainer for NCA pre-pre-training and transfer to language, separate from the generator.

It reads NCA data only through the public loader (`nca_datagen.loader`, stored or generated from a recipe), builds
through the public API (`nca_datagen.build`, for `sweep`) and reads corpora with `nca_datagen.corpus`: any other
trainer could stand in its place. Training on a stored dataset never imports the generator. Modules:

    model     a small Llama-style decoder and its named sizes
    trainer   the training loop: schedule, accumulation, checkpoints, resume, logging
    nca       NCA data (a dataset, or a recipe, mixture or curriculum generated as read) and its batches
    frames    NCA validation loss by frame position, its unigram baselines and picture
    text      byte-level tokens of a corpus, split by document, in batches
    transfer  keep chosen block parts of an NCA checkpoint in a text model
    stages    `pretrain_nca` and `train_text`
    compare   scratch vs NCA-initialised, what such a run can show, and a sweep over complexity bands
    cli       `nca-datagen train nca | text | compare | sweep`
"""
