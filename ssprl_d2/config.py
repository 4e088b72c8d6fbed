"""Config keys of the project, added to a Detectron2 ``CfgNode`` by :func:`add_ssprl_config`.

SS-PRL's defaults are the paper's COCO recipe (METHODS.md section 1); where the paper is silent
they are the authors' release. ``MODEL.MLS`` holds MLS's (METHODS.md section 4), which has no
public code: where its paper is silent the comment says what was chosen and why.
"""
from typing import Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["RENAMED_KEYS", "add_ssprl_config", "load_config", "renamed_key"]

# keys that were renamed when the methods' shared settings got method-neutral names: old key (or
# node) -> new one; a config that still uses an old name gets one line naming the new one
RENAMED_KEYS = {
    "INPUT.SSPRL": "INPUT.PRETRAIN",
    "SOLVER.SSPRL": "SOLVER.PRETRAIN",
    "DATALOADER.SSPRL": "DATALOADER.PRETRAIN",
    "DATASETS.SSPRL": "DATASETS.PRETRAIN",
    "MODEL.SSPRL.CHANNELS_LAST": "MODEL.PRETRAIN.CHANNELS_LAST",
    "MODEL.SSPRL.COMPILE_TRUNK": "MODEL.PRETRAIN.COMPILE_TRUNK",
    "MODEL.SSPRL.CROP_GROUPING": "MODEL.PRETRAIN.CROP_GROUPING",
}


def renamed_key(key: str) -> Optional[str]:
    """The new name of a renamed config key (or of a key under a renamed node), else None.

    Args:
        key: a full dotted key, e.g. ``"INPUT.SSPRL.SIZE_CROPS"``.
    """
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return None


def load_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """A config of this project from a YAML file: Detectron2's defaults, :func:`add_ssprl_config`,
    the file, then ``opts`` (KEY VALUE ... overrides); not frozen."""
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def add_ssprl_config(cfg: CN) -> None:
    """Add the nodes of every method (``MODEL.SSPRL``, ``MODEL.MLS``, ``MODEL.LOCALGLOBAL``,
    ``MODEL.VIT``), what the pre-trainers share (``MODEL.PRETRAIN``, ``INPUT.PRETRAIN``,
    ``DATASETS.PRETRAIN``, ``SOLVER.PRETRAIN``, ``DATALOADER.PRETRAIN``), the multi-label
    protocols' and ``TEST.KNN_PROBE``.

    Args:
        cfg: a Detectron2 config (usually ``get_cfg()``); modified in place.
    """
    _add_model_config(cfg)
    _add_mls_config(cfg)
    _add_localglobal_config(cfg)
    _add_vit_config(cfg)
    _add_input_config(cfg)
    _add_dataset_config(cfg)
    _add_solver_config(cfg)
    _add_multilabel_config(cfg)
    _add_throughput_config(cfg)
    _add_probe_config(cfg)
    _add_semseg_fcn_config(cfg)


def _add_model_config(cfg: CN) -> None:
    cfg.MODEL.SSPRL = CN()
    _C = cfg.MODEL.SSPRL
    # K_s, number of prototypes at each pyramid scale s = 0..S (length S + 1)
    _C.NUM_PROTOTYPES = [300, 150, 150]
    # hidden width of each projection head (Linear - BN - ReLU - Linear)
    _C.HEAD_HIDDEN_DIM = 2048
    # D, output width of each projection head (z is L2-normalised)
    _C.HEAD_OUT_DIM = 128
    # norm in the projection heads: "BN", "SyncBN" or "naiveSyncBN" (as MODEL.RESNETS.NORM)
    _C.HEAD_NORM = "BN"
    # tau, softmax temperature of Eq. 1 and of g_phi's output
    _C.TEMPERATURE = 0.1
    # epsilon, Sinkhorn-Knopp entropic regularisation
    _C.SINKHORN_EPSILON = 0.05
    # number of Sinkhorn-Knopp iterations
    _C.SINKHORN_ITERS = 3
    # indices of the scale-0 crops whose codes are targets (the two large crops)
    _C.CROPS_FOR_ASSIGN = [0, 1]
    # alpha_s, weight of scale s in L_pyr (Eq. 2), length S + 1; 0 switches a scale's term off
    _C.PYR_WEIGHTS = [1.0, 0.25, 0.25]
    # beta_s, weight of patch scale s >= 1 in L_cross (Eq. 3), length S
    _C.CROSS_WEIGHTS = [0.25, 0.25]
    # lambda, weight of L_cross in L = L_pyr + lambda * L_cross (Eq. 4); 0 = "L_pyr only"
    _C.CROSS_LAMBDA = 1.0
    # mu in Eq. 3: "softmax" averages p_sm over patches (paper), "scores" averages z^T C_s (release)
    _C.CROSS_MU = "softmax"
    # L_cross targets: "paired" (paper: Q_0 with view V, Q'_0 with V') or "both" (release: each
    # patch view predicts the codes of both 224 crops, 4 terms)
    _C.CROSS_TARGETS = "paired"
    # how the swapped-prediction terms of a scale (over assigned crops) and L_cross's terms
    # combine: "sum" (the paper's equations) or "mean" (SwAV and the release); under LARS the
    # factor cancels, under SGD "sum" doubles the step
    _C.LOSS_REDUCTION = "sum"
    # one prototype set C_0 used at every scale (Table 4 ablation "shared across all scales")
    _C.SHARED_PROTOTYPES = False
    # iterations during which prototypes and g_phi get no update (release: 648, ~1 COCO epoch)
    _C.FREEZE_PROTOTYPES_ITERS = 648
    # queue length per scale (global, over all processes); 0 disables that scale's queue
    _C.QUEUE_LENGTHS = [1920, 5000, 5000]
    # rounding of QUEUE_LENGTHS: "release" (length minus its remainder modulo the global batch:
    # 5000 -> 4992 at 128; the paper is silent, METHODS.md s.1) or "step" (down to a multiple of
    # one step's entries, global batch x patches per image: 5000 -> 4608)
    _C.QUEUE_ROUNDING = "release"
    # epoch at which the queues switch on (release: 80); negative disables queues
    _C.QUEUE_START_EPOCH = 80
    # when a switched-on queue joins Sinkhorn: "full" (once it is full, as SwAV) or "any" (the
    # release's shared use_the_queue flag: once any queue is full, every switched-on queue joins
    # from then on, its rows not yet written as zeros; differs for a few iterations after the
    # queues switch on)
    _C.QUEUE_JOIN = "full"


def _add_mls_config(cfg: CN) -> None:
    # MLS (Multi-Label Self-supervised learning, ICCV 2023): a MoCo-v2 skeleton plus a
    # multi-label BCE over two same-order dictionaries. Views come from INPUT.PRETRAIN (two crops,
    # no grids: see configs/Pretrain/Base-MLS.yaml)
    cfg.MODEL.MLS = CN()
    _C = cfg.MODEL.MLS
    # hidden width of the two-layer MLP head (MoCo v2: 2048)
    _C.HEAD_HIDDEN_DIM = 2048
    # width of z, the L2-normalised projection held in Q_z (paper: 256-d; MoCo v2 used 128)
    _C.HEAD_OUT_DIM = 256
    # norm between the head's layers: "" (none: MoCo v2's Linear-ReLU-Linear, the paper's
    # skeleton), "BN", "SyncBN" or "naiveSyncBN"; BN centres z, which on small CPU runs slowed
    # the drift of all projections towards one direction that L_ml's shared negatives cause
    _C.HEAD_NORM = ""
    # m, momentum of the key encoder's EMA: theta_k <- m theta_k + (1 - m) theta_q
    _C.MOMENTUM = 0.995
    # tau, temperature of InfoNCE and of the multi-label logits z1 . Q_z / tau
    _C.TEMPERATURE = 0.2
    # D, length of both dictionaries Q_g and Q_z (global: keys of all processes enter them)
    _C.DICTIONARY_LENGTH = 4096
    # k, pseudo-positives per query: the top-k entries of g1 . Q_g get label 1, the rest 0
    _C.TOP_K = 20
    # weight of L_ml in L = L_InfoNCE + w * L_ml (paper: 0.5); 0 is plain MoCo v2
    _C.ML_WEIGHT = 0.5
    # InfoNCE's negatives are Q_z (the MoCo queue, which Q_z is); the paper names no other.
    # symmetric loss: False is MoCo v2 (view 1 queries, view 2 keys, as the paper's g1/z1 read);
    # True adds the swapped term (view 2 queries, view 1 keys), averages the two and pushes both
    # views' keys (twice the trunk calls of the key encoder)
    _C.SYMMETRIC = False
    # key encoder's batch norm: "sync" uses the trunk's own norm (MODEL.RESNETS.NORM: SyncBN in
    # the COCO config, statistics over the global batch, as MoCo v3; cheating through BN needs
    # the query and its key in one small batch); "shuffle" is MoCo v2's shuffle-BN (keys shuffled
    # across processes before the key encoder, per-process BN; on one process: BN_SPLITS > 1)
    _C.KEY_BN = "sync"
    # both encoders (trunk and head) run on BN_SPLITS equal parts of each process's batch, so
    # batch norm sees batch / BN_SPLITS images; with KEY_BN "shuffle" the keys are permuted
    # before the split: MoCo's shuffle-BN emulated on one process (its CIFAR demo's split BN)
    _C.BN_SPLITS = 1
    # C, number of ground-truth classes for the pseudo-label precision scalar (the fraction of a
    # query's top-k pseudo-positives sharing one of its classes); 0 switches it off. Needs an
    # annotated DATASETS.TRAIN (category ids 0..C-1); the labels are never used for training
    _C.PRECISION_CLASSES = 0


def _add_localglobal_config(cfg: CN) -> None:
    # Local-global patch matching on a ViT (METHODS.md section 5): DINO self-distillation on the
    # CLS token and on geometrically matched patch tokens. The trunk's sizes are MODEL.VIT; the
    # views are INPUT.PRETRAIN's scale-0 crops (the first NMB_CROPS[0] are the global, teacher views)
    cfg.MODEL.LOCALGLOBAL = CN()
    _C = cfg.MODEL.LOCALGLOBAL
    # K, output width of the DINO head (DINO: 65536 on the CLS token only; patch tokens multiply
    # the head's activations by ~200, so iBOT's 8192 is the default here)
    _C.HEAD_OUT_DIM = 8192
    # hidden width of the head's 3-layer MLP (DINO: 2048)
    _C.HEAD_HIDDEN_DIM = 2048
    # L2-normalised bottleneck width before the weight-normalised last layer (DINO: 256)
    _C.HEAD_BOTTLENECK_DIM = 256
    # fix the last layer's weight-norm gain to 1 (DINO's norm_last_layer, stabler for ViT-S)
    _C.NORM_LAST_LAYER = True
    # tau_s, student softmax temperature
    _C.STUDENT_TEMP = 0.1
    # tau_t, teacher softmax temperature after the warm-up (the method's paper: 0.04)
    _C.TEACHER_TEMP = 0.04
    # tau_t in the first epoch, raised to TEACHER_TEMP once per epoch along np.linspace over the
    # warm-up epochs (DINO's warm-up; its README's longer ViT-S/16 runs: 0.04 -> 0.07 over 30)
    _C.WARMUP_TEACHER_TEMP = 0.04
    # epochs of the teacher-temperature warm-up (0: TEACHER_TEMP from the start)
    _C.WARMUP_TEACHER_TEMP_EPOCHS = 0
    # m_c, momentum of the per-position teacher centre c <- m_c c + (1 - m_c) batch mean
    _C.CENTER_MOMENTUM = 0.9
    # lambda at iteration 0 of the teacher EMA theta_t <- lambda theta_t + (1 - lambda) theta_s
    _C.MOMENTUM = 0.996
    # lambda at the last iteration (cosine schedule from MOMENTUM, DINO)
    _C.MOMENTUM_END = 1.0
    # epochs during which the head's last layer gets no update (DINO: 1)
    _C.FREEZE_LAST_LAYER_EPOCHS = 1
    # True: CLS and matched patch terms (the method); False: CLS only (DINO, the ablation)
    _C.PATCH_LOSS = True
    # how a view pair's terms combine: "tokens" (CLS and each matched patch pair weigh the
    # same) or "terms" (CLS term and mean patch term half each); see dino_loss.py
    _C.LOSS_AVERAGE = "tokens"


def _add_vit_config(cfg: CN) -> None:
    # ViT trunk sizes, read by the local-global pre-trainer (timm ViT) and by the ViTDet backbone
    # builder (Detectron2's ViT + SimpleFeaturePyramid), so both build the same trunk
    cfg.MODEL.VIT = CN()
    _C = cfg.MODEL.VIT
    # patch side in pixels (ViT-S/16: 16)
    _C.PATCH_SIZE = 16
    # token width (ViT-tiny 192, ViT-S 384, ViT-B 768)
    _C.EMBED_DIM = 384
    # number of transformer blocks (12 for ViT-S and ViT-B)
    _C.DEPTH = 12
    # attention heads (ViT-S 6, ViT-B 12)
    _C.NUM_HEADS = 6
    # MLP width / token width
    _C.MLP_RATIO = 4.0
    # stochastic depth rate at the last block (DINO ViT-S: 0.1; ViTDet ViT-B: 0.1)
    _C.DROP_PATH_RATE = 0.1
    # side of the pre-training (global) crop the position embeddings are sized for; the
    # exported pos_embed has (PRETRAIN_IMG_SIZE / PATCH_SIZE)^2 + 1 rows (ViTDet interpolates)
    _C.PRETRAIN_IMG_SIZE = 224
    # ViTDet: side of the padded square input image (SimpleFeaturePyramid's square_pad)
    _C.IMG_SIZE = 1024
    # ViTDet: window side of windowed attention (14 = 224 / 16)
    _C.WINDOW_SIZE = 14
    # ViTDet: blocks with windowed attention; the others attend globally (ViT-S/B: 2, 5, 8, 11)
    _C.WINDOW_BLOCK_INDEXES = [0, 1, 3, 4, 6, 7, 9, 10]
    # ViTDet: relative position biases in attention (new parameters, not pre-trained)
    _C.USE_REL_POS = True
    # ViTDet: SimpleFeaturePyramid scale factors of the stride-16 map (-> strides 4 .. 32)
    _C.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]


def _add_input_config(cfg: CN) -> None:
    cfg.INPUT.PRETRAIN = CN()
    _C = cfg.INPUT.PRETRAIN
    # scale 0 multi-crop: number of crops of each size (SwAV: 2 large, 6 small)
    _C.NMB_CROPS = [2, 6]
    # scale 0 multi-crop: crop side in pixels, one per NMB_CROPS entry
    _C.SIZE_CROPS = [224, 96]
    # scale 0 multi-crop: RandomResizedCrop minimum area fraction, one per NMB_CROPS entry
    _C.MIN_SCALE_CROPS = [0.14, 0.05]
    # scale 0 multi-crop: RandomResizedCrop maximum area fraction, one per NMB_CROPS entry
    _C.MAX_SCALE_CROPS = [1.0, 0.14]
    # grid side of each patch scale s >= 1 (M_s = GRID^2); [] trains scale 0 only (= SwAV)
    _C.GRIDS = [2, 3]
    # side of the RandomResizedCrop that is cut into the grid at each patch scale
    _C.PATCH_IMAGE_SIZES = [314, 383]
    # side of the RandomCrop taken from each grid cell (one per view) at each patch scale
    _C.PATCH_CROP_SIZES = [112, 96]
    # RandomResizedCrop area fraction range of the image cut into the grid
    _C.PATCH_SCALE_RANGE = [0.6, 1.0]
    # probability of a horizontal flip of every crop and patch
    _C.FLIP_PROB = 0.5
    # record each scale-0 crop's box in the source image and its flip (local-global needs them)
    _C.RECORD_BOXES = False
    # ColorJitter strengths: brightness, contrast, saturation, hue
    _C.COLOR_JITTER = [0.8, 0.8, 0.8, 0.2]
    # probability of applying the colour jitter
    _C.COLOR_JITTER_PROB = 0.8
    # probability of converting to grayscale
    _C.GRAYSCALE_PROB = 0.2
    # probability of Gaussian blur
    _C.BLUR_PROB = 0.5
    # Gaussian blur sigma range, in pixels
    _C.BLUR_SIGMA = [0.1, 2.0]
    # where the photometric part runs: "model" (batched on the training device) or "worker"
    # (per image in the data-loader workers; can be faster on a CPU-only machine)
    _C.PHOTOMETRIC_ON = "model"


def _add_dataset_config(cfg: CN) -> None:
    cfg.DATASETS.PRETRAIN = CN()
    _C = cfg.DATASETS.PRETRAIN
    # user COCO-format datasets registered at start-up, flat list of triples
    # [name, json_file, image_root, ...]; json_file may be "" for a plain image folder
    _C.REGISTER = []


def _add_solver_config(cfg: CN) -> None:
    cfg.SOLVER.PRETRAIN = CN()
    _C = cfg.SOLVER.PRETRAIN
    # optimiser: "LARS" (timm.optim.Lars around SGD, release), "SGD" or "AdamW" (DINO: biases
    # and 1-d tensors without weight decay; SOLVER.CLIP_GRADIENTS applies). Fine-tuning reads
    # only "AdamW" (ViTDet's optimiser); any other value keeps Detectron2's SGD there
    _C.OPTIMIZER = "LARS"
    # weight decay at the last iteration, reached by a cosine from SOLVER.WEIGHT_DECAY (DINO:
    # 0.04 -> 0.4); negative keeps SOLVER.WEIGHT_DECAY constant
    _C.WEIGHT_DECAY_END = -1.0
    # SOLVER.LR_SCHEDULER_NAME "WarmupThenCosineLR" (ssprl_d2/engine/schedules.py): the cosine
    # changes once every COSINE_STEP_ITERS iterations after the warm-up; 1: every iteration
    # (DINO, SwAV, the release), one epoch of iterations: MoCo v2's per-epoch cosine
    _C.COSINE_STEP_ITERS = 1
    # fine-tuning with OPTIMIZER "AdamW" (ViTDet): learning-rate factor per ViT block from the
    # top, lr x LAYER_DECAY^(depth + 1 - layer) (ViTDet ViT-B: 0.7); 1.0 switches it off
    _C.LAYER_DECAY = 1.0
    # LARS trust coefficient eta
    _C.LARS_TRUST = 0.001
    # True: BN weights and all biases (1-d tensors) skip LARS adaptation and weight decay (SwAV,
    # solo-learn); False: every parameter is adapted and decayed (the release)
    _C.LARS_EXCLUDE_BN_BIAS = False
    # how epochs (QUEUE_START_EPOCH, the teacher's warm-up and freeze epochs) become iterations:
    # False counts the last partial batch (ceil(N / global batch)); True counts as the release's
    # and SwAV's DistributedSampler loader with drop_last (floor(ceil(N / world) / batch per
    # process)): COCO train2014 at 128 gives 646 instead of 647
    _C.DROP_LAST = False


def _add_probe_config(cfg: CN) -> None:
    cfg.TEST.KNN_PROBE = CN()
    _C = cfg.TEST.KNN_PROBE
    # pre-training: run the kNN multi-label probe on the live trunk every this many iterations
    # (and at the last one); 0 turns it off (the default: unlabeled data has nothing to probe)
    _C.PERIOD = 0
    # labelled dataset searched for neighbours ("": DATASETS.TRAIN[0])
    _C.TRAIN_DATASET = ""
    # labelled dataset that is scored ("": DATASETS.TEST[0], else ssprl_synthetic_val)
    _C.TEST_DATASET = ""
    # neighbours per test image
    _C.K = 20
    # True: every probed trunk (trained or random) gets BN statistics re-estimated on the probe's
    # training images, so trunks are compared by their weights, not by statistics of augmented
    # training crops or a random trunk's identity statistics; False: running statistics as stored
    _C.RECOMPUTE_BN = True
    # random trunks probed alongside (N seeds from tools/probe.py's --seed, else from 0): their
    # mean +- std is the seed-to-seed spread
    _C.RANDOM_SEEDS = 3


def _add_multilabel_config(cfg: CN) -> None:
    # downstream multi-label classification (METHODS.md section 2): linear and semi-supervised
    cfg.MODEL.MULTILABEL = CN()
    # number of labels C of the classifier (COCO 80, VOC07 20); must equal the dataset's classes
    cfg.MODEL.MULTILABEL.NUM_CLASSES = 80
    # True: linear evaluation (trunk frozen, BN statistics fixed); False: fine-tune the whole net
    cfg.MODEL.MULTILABEL.FREEZE_TRUNK = True
    cfg.INPUT.MULTILABEL = CN()
    # side of the training RandomResizedCrop and of the test CenterCrop, in pixels
    cfg.INPUT.MULTILABEL.CROP_SIZE = 224
    # test-time Resize: short side in pixels before the CenterCrop
    cfg.INPUT.MULTILABEL.RESIZE_SIZE = 256
    cfg.DATASETS.MULTILABEL = CN()
    # fraction of labelled training images used, in (0, 1] (semi-supervised: 0.01, 0.1, 1.0)
    cfg.DATASETS.MULTILABEL.TRAIN_FRACTION = 1.0
    # seed of the random choice of that fraction (same seed, same images)
    cfg.DATASETS.MULTILABEL.SUBSET_SEED = 0


def _add_throughput_config(cfg: CN) -> None:
    # speed switches; the defaults are the behaviour before they existed (see tools/gpu_check.py
    # for the measurements that would justify changing one)
    # every pre-trainer's trunk (ssprl_d2/modeling/pretrainer.py Pretrainer)
    cfg.MODEL.PRETRAIN = CN()
    _C = cfg.MODEL.PRETRAIN
    # trunk weights and crops in channels-last memory format (faster convolutions with AMP on
    # tensor-core GPUs; no effect on the result)
    _C.CHANNELS_LAST = False
    # compile the trunk with torch.compile (nn.Module.compile: state-dict names unchanged);
    # the first steps pay the compilation, and each crop size compiles once
    _C.COMPILE_TRUNK = False
    # which crops share one trunk call (and so one batch-norm batch), every pre-trainer: "size"
    # (all crops of one size, largest first: 3 calls at the paper's settings) or "consecutive"
    # (each run of equal sizes in layout order, as SwAV's and the release's unique_consecutive:
    # 4 calls at the paper's settings)
    _C.CROP_GROUPING = "size"
    # autocast dtype when SOLVER.AMP.ENABLED: "float16" (with a gradient scaler) or "bfloat16"
    # (no scaler; needs Ampere or newer); read by tools/train_net.py for every model
    cfg.SOLVER.PRETRAIN.AMP_DTYPE = "float16"
    cfg.DATALOADER.PRETRAIN = CN()
    # pre-training loader: page-locked batches, so host-to-GPU copies can overlap compute
    cfg.DATALOADER.PRETRAIN.PIN_MEMORY = False
    # pre-training loader: keep the worker processes between passes over the loader (only
    # matters when it is iterated more than once in a process)
    cfg.DATALOADER.PRETRAIN.PERSISTENT_WORKERS = False


def _add_semseg_fcn_config(cfg: CN) -> None:
    # semantic segmentation as DenseCL and the SS-PRL release ran it (mmsegmentation's FCN on a
    # dilated ResNet, poly schedule, its training pipeline); read by ssprl_d2/modeling/
    # semantic_fcn.py, ssprl_d2/data/semseg.py and ssprl_d2/engine/finetune.py
    # dilation of res4 in build_resnet_dilated_backbone (1: strided; R50-D8: 2, with
    # MODEL.RESNETS.RES5_DILATION 4); the name of Detectron2's DeepLab project
    cfg.MODEL.RESNETS.RES4_DILATION = 1
    cfg.MODEL.FCN = CN()
    _C = cfg.MODEL.FCN
    # FCNHead: 3x3 conv-norm-ReLU layers before the classifier (width MODEL.SEM_SEG_HEAD.CONVS_DIM)
    _C.NUM_CONVS = 2
    # FCNHead: concatenate the input feature to the convs' output, then one more conv
    _C.CONCAT_INPUT = True
    # FCNHead: Dropout2d probability before the 1x1 classifier
    _C.DROPOUT = 0.1
    # align_corners of every logit resize (mmsegmentation: False on VOC, True on Cityscapes 769)
    _C.ALIGN_CORNERS = False
    # backbone feature of the auxiliary FCN (one conv, training only); "" for none
    _C.AUX_IN_FEATURE = "res4"
    # width of the auxiliary FCN's conv
    _C.AUX_CONVS_DIM = 256
    # weight of the auxiliary loss loss_sem_seg_aux
    _C.AUX_LOSS_WEIGHT = 0.4
    # cross-entropy summed over labelled pixels divided by "all" pixels of the padded batch
    # (mmsegmentation <= 0.21, as DenseCL and the release ran) or by the "valid" (labelled) ones
    _C.LOSS_AVERAGE = "all"
    # SlidingWindowSegmentor test: sliding window [height, width]; [] for the whole image
    _C.TEST_CROP_SIZE = []
    # SlidingWindowSegmentor test: window step [height, width] (with TEST_CROP_SIZE)
    _C.TEST_STRIDE = []
    cfg.INPUT.SEMSEG = CN()
    # training pipeline of semantic segmentation: "detectron2" (DatasetMapper: crop of the original
    # image, resize, flip) or "mmseg" (resize, category-capped crop, flip, photometric distortion)
    cfg.INPUT.SEMSEG.PIPELINE = "detectron2"
    # "mmseg": redraw a crop (up to 10 times) while one category covers this fraction or more of
    # its labelled pixels (mmsegmentation's cat_max_ratio: 0.75); 1.0 accepts every crop
    cfg.INPUT.SEMSEG.CATEGORY_MAX_AREA = 1.0
    # SOLVER.LR_SCHEDULER_NAME "PolyLR": (BASE_LR - BASE_LR_END) (1 - iter / MAX_ITER)^POWER +
    # BASE_LR_END (mmsegmentation's poly; its min_lr is Detectron2's SOLVER.BASE_LR_END); the
    # exponent (mmsegmentation: 0.9), the name of Detectron2's DeepLab project
    cfg.SOLVER.POLY_LR_POWER = 0.9
