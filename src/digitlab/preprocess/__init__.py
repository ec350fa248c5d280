"""Any picture of a digit -> a 28x28 uint8 image made the way MNIST itself was made.

MNIST's digits were scanned from paper, binarised and then
1. cropped to the ink's bounding box and scaled, keeping the aspect ratio, so that the longer side is
   20 pixels (anti-aliasing gives the grey edges);
2. placed in a 28x28 field so that the ink's centre of mass falls on the centre, by an integer shift.
   Measured on the data, the centre of mass sits at row 14, column 14 in array-index coordinates
   (14.5 if pixel centres are counted as x + 0.5), within half a pixel.
Ink is bright (255) on a black (0) background.

A model trained on MNIST expects exactly that, so every entry point (CLI, Predictor, REST API, web
canvas) sends its images through `to_mnist` (or `canvas_to_mnist`) before `normalize`. A real photo
needs some cleaning before the MNIST steps:
- colour to grey: deviations from the paper colour are projected on the ink's colour direction, so
  blue ink on yellow paper works; a mostly transparent image is a drawing whose opaque pixels are the ink;
- levelling: a smooth (quadratic) background is fitted per channel while ignoring outliers (the ink) and
  subtracted, so a lighting gradient or a vignette does not become ink. The paper's colour and spread are
  read from the image's edges, which stay mostly paper even in a close crop where the ink touches every
  edge and covers most of the picture (a marker pen); the image's majority would be ink there. Where ink covers
  so much of a crop's edges that the level found there is the ink or its grey rim, the picture's two levels and
  the digit's shape decide: the ink is one piece that splits the paper into several;
- polarity: the side with the strongest deviations from that paper is the ink, which is made bright;
- thresholding: Otsu's threshold on the levelled image finds the strong strokes, specks that are not
  part of the main strokes are dropped, and the soft ink values near the strokes are kept, stretched so
  the ink's strong pixels reach 255.
An image with no ink, one that cannot be read, one in a format outside digitlab.formats.IMAGE_FORMATS (no
other Pillow decoder ever sees the bytes), or one larger than MAX_IMAGE_SIDE is an ImageError.

numpy and Pillow only (tensors are accepted, but PyTorch is not imported for them: a process that never imported
it cannot hold one, and `digitlab predict` on ONNX Runtime runs without it); every function is pure (inputs in,
outputs out). Try it:

    python -c "from digitlab.preprocess import to_mnist; print(to_mnist('digit.jpg'))"

One module, one job, in the order a picture meets them:
- reading.py: any source (file, bytes, PIL image, array, tensor) to float pixels, the size limits, alpha, shrinking;
- background.py: the paper's quadratic surface, fitted from the edges (or the majority) without the ink;
- paper_check.py: where ink covers much of a crop's edges, which of its two levels is the paper;
- polarity.py: the levelled ink strength along the ink's colour, and which side is the ink;
- strip.py: a picture much longer than wide read as a stroke along it;
- strokes.py: Otsu's strokes, specks dropped, soft edges kept, and BlankImageError where there is no ink;
- geometry.py: MNIST's 20-pixel box and 28x28 field centred on the ink's centre of mass;
- pipeline.py: the stages in order: to_mnist, canvas_to_mnist;
- constants.py (the numbers the stages share), stats.py (fast exact median, percentile, histogram; Otsu),
  morphology.py (dilation, 3x3 mean, connected components on numpy alone).
"""
from digitlab.preprocess.constants import (BOX_LEVEL, CANVAS, CENTER, DARK_PAPER, DEPTH_RATIO, FIT_GRID, FIT_ROUNDS,
                                           INK_LIKE, LABEL_GRID, LEVEL_SLACK, MARGIN, MAX_IMAGE_SIDE, MIN_CONTRAST,
                                           MIXED_EDGE, NARROW, PIECE_FRACTION, SPECK_FRACTION, STRIP, STROKE_SNR,
                                           TARGET_BOX, TWO_LEVELS, WORK_SIDE)
from digitlab.preprocess.pipeline import canvas_to_mnist, canvas_to_mnist_measured, ink_extent, to_mnist
from digitlab.preprocess.reading import ALPHA_MODES, ImageSource, load_image
from digitlab.preprocess.strokes import BlankImageError

__all__ = ["ALPHA_MODES", "BOX_LEVEL", "BlankImageError", "CANVAS", "CENTER", "DARK_PAPER", "DEPTH_RATIO", "FIT_GRID",
           "FIT_ROUNDS", "INK_LIKE", "ImageSource", "LABEL_GRID", "LEVEL_SLACK", "MARGIN", "MAX_IMAGE_SIDE",
           "MIN_CONTRAST", "MIXED_EDGE", "NARROW", "PIECE_FRACTION", "SPECK_FRACTION", "STRIP", "STROKE_SNR",
           "TARGET_BOX", "TWO_LEVELS", "WORK_SIDE", "canvas_to_mnist", "canvas_to_mnist_measured", "ink_extent",
           "load_image", "to_mnist"]
