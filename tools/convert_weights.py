#!/usr/bin/env python
"""Export the trunk (ResNet or ViT) of a pre-training checkpoint for fine-tuning.

    # SS-PRL checkpoint -> Detectron2 weights (.pkl) for Mask R-CNN
    python tools/convert_weights.py output/ssprl_R_50_200ep_coco2014/model_final.pth ssprl_r50.pkl
    # -> torchvision format, for other toolkits
    python tools/convert_weights.py model_final.pth ssprl_r50_tv.pth --format torchvision
    # a torchvision ResNet state dict works as input too
    python tools/convert_weights.py resnet50.pth resnet50_d2.pkl
    # local-global ViT checkpoint -> ViTDet weights (backbone.net.*) for Mask R-CNN
    python tools/convert_weights.py output/localglobal_ViT_S_16_800ep_coco2017/model_final.pth \
        localglobal_vit_s16.pkl
    # -> a timm state dict: timm.create_model("vit_small_patch16_224", pretrained=False,
    #    num_classes=0).load_state_dict(torch.load(...), strict=True)
    python tools/convert_weights.py model_final.pth localglobal_vit_s16_timm.pth --format timm

Only trunk weights are written (heads, prototypes, g_phi and queues are dropped); the tool prints
what it kept, dropped and renamed, and writes nothing on any error (non-zero exit). Fine-tune the
exported weights with the deltas self-supervised RGB weights need
(configs/COCO-InstanceSegmentation/Base-RCNN-FPN-SSL.yaml):
INPUT.FORMAT RGB, PIXEL_MEAN [123.675, 116.280, 103.530], PIXEL_STD [58.395, 57.120, 57.375],
RESNETS.STRIDE_IN_1X1 False, BACKBONE.FREEZE_AT 0. A ViT export loads into
configs/COCO-InstanceSegmentation/Base-ViTDet-SSL.yaml (MODEL.VIT sizes as pre-trained; the
teacher, the CLS token and the final norm are dropped).
"""
import sys

from ssprl_d2.convert import main

if __name__ == "__main__":
    sys.exit(main())
