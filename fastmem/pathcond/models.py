"""The PyTorch models of PathCond's experiments (imported on use: it needs torch).

- torchvision's ResNets written out block for block (torchvision.models.resnet: BasicBlock,
  Bottleneck, ResNet; the same module names, the same forward, ``out += identity`` included):
  the torchvision wheel on PyPI is built against the CUDA PyTorch and does not load beside a CPU
  build, and the tests and benchmarks need them as they are; ``stem="cifar"`` is the authors'
  small-image variant (a 3 x 3 stride-1 first convolution, no max-pooling);
- ``full_conv``: the shape of the authors' fully convolutional CIFAR network with BatchNorm (after
  Gitman et al.), at any width and image size.
"""

import torch
from torch import nn


def _conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _conv1x1(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet; ``width`` the first stage's channels (64), ``stem`` "imagenet" (a 7 x 7
    stride-2 convolution and max-pooling) or "cifar" (3 x 3 stride 1, no pooling)."""

    def __init__(self, block, layers, num_classes=1000, width=64, in_channels=3, stem="imagenet"):
        super().__init__()
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(**kw):
    return ResNet(BasicBlock, [2, 2, 2, 2], **kw)


def resnet34(**kw):
    return ResNet(BasicBlock, [3, 4, 6, 3], **kw)


def resnet50(**kw):
    return ResNet(Bottleneck, [3, 4, 6, 3], **kw)


def full_conv(widths=(128, 256, 320), in_channels=3, num_classes=10, image=32):
    """The authors' full_conv network (their FullyConvolutional, CIFAR-10 with BatchNorm) in shape:
    three blocks; the first two of three 3 x 3 convolutions with BatchNorm after the third, then
    3 x 3 max-pooling of stride 2; the third a 3 x 3, a 1 x 1 and a 1 x 1 convolution to the
    classes, a ReLU and global average pooling (their widths 128, 256, 320; biases on)."""
    a, b, c = widths
    pool = image // 4  # two stride-2 poolings: 32 -> 8 as theirs

    def conv(i, o, k=3):
        return nn.Conv2d(i, o, k, 1, k // 2, bias=True)

    return nn.Sequential(
        conv(in_channels, a), nn.ReLU(), conv(a, a), nn.ReLU(), conv(a, a), nn.BatchNorm2d(a), nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        conv(a, b), nn.ReLU(), conv(b, b), nn.ReLU(), conv(b, b), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        conv(b, c), nn.ReLU(), conv(c, c, 1), nn.ReLU(), conv(c, num_classes, 1), nn.ReLU(), nn.AvgPool2d(pool),
        nn.Flatten())
