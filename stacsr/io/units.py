"""The units of every raster stacsr reads and writes: reflectance × 10000 in uint16, 0 = nodata."""

REFLECTANCE_SCALE = 1e-4  # uint16 DN × scale = reflectance (the GDAL/STAC ``scale`` of every output band)
DN_PER_REFLECTANCE = round(1 / REFLECTANCE_SCALE)  # 10000 DN = reflectance 1.0, the data range of PSNR/SSIM
NODATA = 0
