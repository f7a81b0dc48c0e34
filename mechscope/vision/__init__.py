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

# dataset examples, weight visualisation, synthetic stimuli and tuning curves
from .examples import DatasetExamples, channel_values, dataset_examples  # noqa: E402
from .expanded import (ChannelCircuit, ExpandedWeights, FirstLayerFilters, channel_circuit,  # noqa: E402
                       expanded_weights, first_layer_filters, weights_as_images)
from .stimuli import Stimuli, curves, edges, gratings, lines  # noqa: E402
from .tuning import (CurveDetectors, OrientationSummary, TuningCurves, curve_tuning, edge_tuning,  # noqa: E402
                     find_curve_detectors, grating_tuning, orientation_summary, tuning_curves)

__all__ += ["DatasetExamples", "channel_values", "dataset_examples", "ChannelCircuit", "ExpandedWeights",
            "FirstLayerFilters", "channel_circuit", "expanded_weights", "first_layer_filters", "weights_as_images",
            "Stimuli", "curves", "edges", "gratings", "lines", "CurveDetectors", "OrientationSummary",
            "TuningCurves", "curve_tuning", "edge_tuning", "find_curve_detectors", "grating_tuning",
            "orientation_summary", "tuning_curves"]

# equivariance (channel families under rotations, reflections, colour changes) and modularity (n-cut of the
# weight and co-activation graphs against shuffled networks)
from .equivariance import EquivarianceResult, Family, Symmetry, Transform, equivariance  # noqa: E402
from .modularity import GraphClustering, ModularityResult, modularity  # noqa: E402

__all__ += ["EquivarianceResult", "Family", "Symmetry", "Transform", "equivariance", "GraphClustering",
            "ModularityResult", "modularity"]

# feature visualisation by optimisation
from . import objectives, param, transforms  # noqa: E402
from .featvis import FeatureReader, FeatureVis, visualize, write_png  # noqa: E402

__all__ += ["FeatureReader", "FeatureVis", "objectives", "param", "transforms", "visualize", "write_png"]

# vision networks by zoo name or from a local file, with their image format and dataset images
from .networks import (ImageSet, VisionNetwork, file_network, image_set_file, load_network,  # noqa: E402
                       parse_image_shape, parse_range, vision_zoo_names, zoo_network)

__all__ += ["ImageSet", "VisionNetwork", "file_network", "image_set_file", "load_network", "parse_image_shape",
            "parse_range", "vision_zoo_names", "zoo_network"]
