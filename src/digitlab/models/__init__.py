"""The model zoo: every model takes (B, C, H, W) float images and returns (B, num_classes) logits, for the shape
it was built for: create_model(name, num_classes=10, in_chans=1, image_size=(28, 28), **options), MNIST's by
default. A builder registered with register_model takes the same three keywords to build other shapes.

registry.py holds the registry (register_model, create_model, list_models, ...); each family of models lives
in its own module and registers its builders when imported here, so `digitlab.models` is the whole zoo.
"""
from digitlab.models.registry import (MAX_PARAMETERS, check_model_args, choice, conv_out, count_parameters,
                                      create_model, flat_features, get_builder, list_models, model_defaults,
                                      positive_int, probability, register_model, takes_shape)
from digitlab.models.mlp import MLP, mlp
from digitlab.models.lenet import LeNet5, lenet5
from digitlab.models.cnn import CNN, cnn
from digitlab.models.alexnet import AlexNet, alexnet
from digitlab.models.digitnet import DigitNet, conv_bn, digitnet
from digitlab.models.recurrent import RowRNN, gru, lstm, rnn

__all__ = ["MAX_PARAMETERS", "check_model_args", "choice", "conv_out", "count_parameters", "create_model",
           "flat_features", "get_builder", "list_models", "model_defaults", "positive_int", "probability",
           "register_model", "takes_shape",
           "MLP", "mlp", "LeNet5", "lenet5", "CNN", "cnn", "AlexNet", "alexnet", "DigitNet", "conv_bn", "digitnet",
           "RowRNN", "gru", "lstm", "rnn"]
