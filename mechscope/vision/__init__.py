"""The microscope for vision networks: feature maps of convolutional layers, what drives their channels.

Every function takes the network (an adapter from `ms.wrap` / `ms.load`, or a plain nn.Module), the
layer by its submodule path, and the images' format (`ImageSpec`) as parameters, so a user's own
convolutional network loaded from a local file is analysed like the zoo's.

    import mechscope as ms
    from mechscope.vision import ImageSpec, feature_layer
    model = ms.load("zoo:fmnist-cnn")
    spec = ImageSpec(channels=1, height=28, width=28)
    layer = feature_layer(model, "relu2", spec)      # FeatureLayer(path='relu2', channels=64, ...)
"""

from .layers import (FeatureLayer, ImageSpec, VisionInputError, channel_activations, check_channel,
                     feature_layer, feature_layers, parse_target)

__all__ = ["FeatureLayer", "ImageSpec", "VisionInputError", "channel_activations", "check_channel",
           "feature_layer", "feature_layers", "parse_target"]

# equivariance (channel families under rotations, reflections, colour changes) and modularity (n-cut of the
# weight and co-activation graphs against shuffled networks)
from .equivariance import EquivarianceResult, Family, Symmetry, Transform, equivariance  # noqa: E402
from .modularity import GraphClustering, ModularityResult, modularity  # noqa: E402

__all__ += ["EquivarianceResult", "Family", "Symmetry", "Transform", "equivariance", "GraphClustering",
            "ModularityResult", "modularity"]
