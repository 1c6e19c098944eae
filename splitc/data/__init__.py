"""Data sets: the embedded synthetic sets, torchvision/ImageFolder/CIFAR loaders, digits."""
