"""The numbers that make MNIST's geometry and tune the cleaning, in one place: several stages share them."""

CANVAS = 28  # side of an MNIST image
TARGET_BOX = 20  # longer side of the ink's bounding box in an MNIST image
CENTER = 14.0  # where MNIST puts the ink's centre of mass, in array-index coordinates (row, column)
MAX_IMAGE_SIDE = 4096  # larger images are refused before their pixels are decoded
WORK_SIDE = 1024  # larger images are averaged down to this before cleaning; the digit ends up 20 px anyway
MIN_CONTRAST = 0.08  # weaker ink than this (fraction of the full range) after levelling means "no digit"
DARK_PAPER = 0.1  # paper darker than this is black paper: its rounding noise must not scale the ink
BOX_LEVEL = 0.2  # soft ink at least this strong (fraction of the strokes' level) defines the bounding box
SPECK_FRACTION = 0.05  # ink groups with less than this fraction of the largest group's ink are specks
FIT_GRID = 48  # the background is fitted on about this many samples per side
FIT_ROUNDS = 3  # at most this many fits, each without the samples the last one left far from it
LABEL_GRID = 32  # specks are found on a grid of about this many cells per side
MARGIN = 3  # pixels kept around the 20-pixel box when resampling, for the soft edges
STRIP = 4  # a picture this many times longer than wide is a strip: its short side is a few stroke widths
STROKE_SNR = 2  # a strip's cross-section must depart from paper by this many times the pixels' spread about it
MIXED_EDGE = 0.25  # this fraction of the edge looking like ink (far from the paper fitted there): check the paper
INK_LIKE = 0.25  # departing from the paper by this fraction of the picture's largest departure looks like ink
PIECE_FRACTION = 0.01  # a group of paper or ink this large (fraction of the picture) counts as a piece
DEPTH_RATIO = 1.5  # where paper and ink are one piece each, the paper is this many times thicker than the ink
NARROW = 2  # a crop this many times longer than wide: its ink's thickness says nothing of which side is paper
TWO_LEVELS = 6  # paper and ink: their medians this many times their spread apart (noise cut in two: about 2)
LEVEL_SLACK = 0.15  # the edges' paper level stands within this fraction of the contrast short of the paper's median
