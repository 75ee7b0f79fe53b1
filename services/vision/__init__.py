"""Image encoder service: PNG, JPEG and DICOM decoding, the image backbone, screen text (OCR) and the CT lung-lesion measurement."""
