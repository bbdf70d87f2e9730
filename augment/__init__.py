"""Augment stage: rendered HDR clips -> realistic LDR video (exposure shift, AR(1) heteroscedastic noise, sRGB,
clipping, 8-bit quantisation) and exposure masks. Planned in issue #4; nothing is implemented here yet."""
