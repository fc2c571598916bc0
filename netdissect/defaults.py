"""Every default value of the dissection, and the choices of its options, in one place (no imports:
the command registrations read it).

The CLI (``--help`` shows these), the library functions and the report read them from here. The
workflow's defaults are in config/schema.yaml and config/config.yaml; a test checks that those equal
the values below, key by key (the workflow stores activations as float16 by default, a documented
choice: a workflow keeps every shard on disk; see config/schema.yaml ``dissect.dtype``).
"""

# Thresholds and scores (docs/dissection.md §2, §5)
QUANTILE = 0.005  # q: each unit's threshold is the exact (1 - q) quantile of its values
IOU_THRESHOLD = 0.04  # a unit is a detector when its score >= this
UNION = "paper"  # the category-restricted activation rule (docs/dissection.md §4)
UNIONS = ("paper", "lite")
UPSAMPLE = "bilinear"  # how maps are upsampled to the segmentation grid (docs/dissection.md §3)
UPSAMPLES = ("bilinear", "fieldmap")
PRESET = None  # a named preset sets every convention of one system at once (netdissect/presets.py)
PRESETS = ("original", "lite")

# Running the stages
BATCH_SIZE = 32  # images per batch: forward pass, tally, report
DTYPE = "float32"  # storage type of activations in the shards
DTYPES = ("float32", "float16")
DEVICE = "cpu"
MEMORY_FORMAT = "channels_last"  # of the forward pass's input: convolutions run fastest so on the CPU
MEMORY_FORMATS = ("channels_last", "contiguous")  # contiguous: for models whose code needs it (x.view)
ACTIVATIONS = "store"  # store: keep activations on disk; recompute: keep none, rerun the forward pass
ACTIVATION_CHOICES = ("store", "recompute")

# Models (docs/dissection.md §1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIVISOR = 255.0  # pixel values are divided by this before the mean is subtracted ([0, 1] inputs)
MEAN_PRECISIONS = ("float32", "float64")  # the arithmetic the mean is subtracted in (then float32)
# Caffe models (docs/caffe-models.md §3): B, G, R pixel values 0–255 minus this mean, the original
# system's value for every network; std 1
CAFFE_MEAN = (109.5388, 118.6897, 124.6901)
CAFFE_STD = (1.0, 1.0, 1.0)
RANDOM_INIT_SEED = 0  # seed of the random initialisation of torchvision, timm and factory models
TOKEN_MODES = ("spatial", "cls")  # --tokens: a token layer's patch grid (default) or its class token

# Reports (docs/dissection.md §7)
TOPK = 10  # top images shown per unit
JPEG_QUALITY = 85  # of the image strips
REPORT_THREADS = 2  # threads decoding and encoding images

# Comparing two result files (`netdissect compare`)
COMPARE_TOLERANCE = 1e-6  # IoUs closer than this agree (the systems' text formats differ in the last digits)
COMPARE_LIMIT = 20  # differing units listed

# The demo network
DEMO_EPOCHS = 6

# Archives (`netdissect fetch --extract`): refuse a "zip bomb"
ARCHIVE_MAX_RATIO = 100.0  # unpacked bytes per archive byte (images barely compress; deflate's best is ~1000)
ARCHIVE_RATIO_FLOOR = 64 << 20  # archives unpacking to less than this (64 MiB) are never refused for their ratio
# Experiments (docs/experiments.md)
ROTATION_SEED = 0  # seed of the random rotation Q of a layer's units
PERMUTATIONS = 100  # K, permutations of the significance test (the workflow's dissect.permutations: 0 = off)
PERMUTATION_SEED = 0
ALPHA = 0.01  # a unit is significant when p <= alpha
SNAPSHOT_COUNT = 6  # train-demo --snapshots without steps: this many log-spaced steps, the last one included
