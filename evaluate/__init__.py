"""Evaluation: PSNR_T/SSIM_T, PU21, FovVideoVDP/ColorVideoVDP, temporal stability, the colour-mapping table.
Planned in issue #9; nothing is implemented here yet."""
