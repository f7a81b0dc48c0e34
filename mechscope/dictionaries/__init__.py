"""Dictionaries that unfold superposition: sparse autoencoders, transcoders and crosscoders.

    from mechscope import dictionaries as dl
    store = dl.harvest(model, tokens, "acts/", dl.HarvestConfig(sites=("resid_post.6",)))
    sae = dl.build("topk", d_in=store.widths["blocks.6.hook_resid_post"], d_sae=4096, k=32)
    dl.train(sae, dl.ShuffleBuffer(store, ["resid_post.6"], 4096), dl.TrainConfig(tokens=2_000_000))
    dl.evaluate(sae, store.load(["resid_post.6"])[0])             # L0, FVU, dead and dense latents
    dl.loss_recovered(model, sae, tokens[:64], "resid_post.6")    # against zero and mean ablation
    dl.save(sae, "sae/"); dl.load("sae/")                         # the SAELens layout

Depends on mechscope.core only: any adapter (`mechscope.load`, `mechscope.wrap`) can feed it.
"""

from .base import DictConfig, Dictionary, LossParts
from .batchtopk import BatchTopKConfig, BatchTopKSAE
from .compare import Comparison, Matching, compare, cosines, match, mmcs
from .clt import CLTConfig, CrossLayerTranscoder
from .crosscoder import BatchTopKCrosscoder, BatchTopKCrosscoderConfig, Crosscoder, CrosscoderConfig
from .files import DictionaryFileError
from .jumprelu import JumpReLUConfig, JumpReLUSAE
from .metrics import (DictMetrics, LossRecovered, density_histogram, embedding_distance, evaluate, loss_recovered,
                      next_token_ce)
from .polysemanticity import (Diversity, Spread, baseline_diversity, dictionary_diversity, neuron_spread,
                              token_diversity)
from .registry import ARCHITECTURES, build, config_class, dictionary_class
from .relu import ReLUConfig, ReLUSAE
from .relu_transcoder import ReLUTranscoder, ReLUTranscoderConfig
from .saelens import load, save, weights_equal
from .sparse import SparseCodes, sparse_decode
from .store import ActivationStore, HarvestConfig, JointStore, ShuffleBuffer, capture_sites, harvest
from .topk import TopKConfig, TopKSAE
from .train import TrainConfig, TrainResult, batches_from_tensors, train
from .replacement import ReplacementScores, replacement_interventions, replacement_scores
from .transcoder import Transcoder, TranscoderConfig
from .transcoder_run import TranscoderRunConfig, train_transcoder_set
from .transcoder_set import TranscoderSet, load_transcoder_set

__all__ = ["ARCHITECTURES", "ActivationStore", "BatchTopKConfig", "BatchTopKCrosscoder",
           "BatchTopKCrosscoderConfig", "BatchTopKSAE", "CLTConfig", "CrossLayerTranscoder", "Comparison", "Crosscoder",
           "CrosscoderConfig", "DictConfig", "DictMetrics", "Dictionary", "DictionaryFileError", "Diversity",
           "HarvestConfig", "JointStore", "JumpReLUConfig", "JumpReLUSAE", "LossParts", "LossRecovered", "Matching",
           "ReLUConfig", "ReLUSAE", "ReLUTranscoder", "ReLUTranscoderConfig", "ShuffleBuffer", "SparseCodes", "Spread", "TopKConfig", "TopKSAE", "TrainConfig",
           "TrainResult", "Transcoder", "TranscoderConfig", "TranscoderRunConfig", "TranscoderSet",
           "ReplacementScores", "replacement_interventions", "replacement_scores", "train_transcoder_set",
           "load_transcoder_set", "baseline_diversity", "batches_from_tensors", "build",
           "capture_sites", "compare", "config_class", "cosines", "density_histogram", "dictionary_class",
           "dictionary_diversity", "embedding_distance", "evaluate", "harvest", "load", "loss_recovered", "match",
           "mmcs", "neuron_spread", "next_token_ce", "save", "sparse_decode", "token_diversity", "train",
           "weights_equal"]
