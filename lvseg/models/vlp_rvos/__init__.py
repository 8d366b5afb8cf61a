"""VLP-RVOS (arXiv 2405.10610): a frozen vision-language pre-trained backbone (CLIP or VLMo) with temporal-aware
prompt tuning. The backbones and their checkpoint converters live in :mod:`.backbones`, :mod:`.clip_convert` and
:mod:`.vlmo`."""
