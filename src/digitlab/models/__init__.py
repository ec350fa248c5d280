"""The model zoo: every model takes (B, 1, 28, 28) float images and returns (B, 10) logits.

registry.py holds the registry (register_model, create_model, list_models, ...); each family of models lives
in its own module and registers its builders when imported here, so `digitlab.models` is the whole zoo.
"""
from digitlab.models.registry import (MAX_PARAMETERS, check_model_args, choice, count_parameters, create_model,
                                      get_builder, list_models, model_defaults, positive_int, probability,
                                      register_model)
from digitlab.models.mlp import MLP, mlp
from digitlab.models.lenet import LeNet5, lenet5
from digitlab.models.cnn import CNN, cnn
from digitlab.models.alexnet import AlexNet, alexnet
from digitlab.models.digitnet import DigitNet, conv_bn, digitnet
from digitlab.models.recurrent import RowRNN, gru, lstm, rnn

__all__ = ["MAX_PARAMETERS", "check_model_args", "choice", "count_parameters", "create_model", "get_builder",
           "list_models", "model_defaults", "positive_int", "probability", "register_model",
           "MLP", "mlp", "LeNet5", "lenet5", "CNN", "cnn", "AlexNet", "alexnet", "DigitNet", "conv_bn", "digitnet",
           "RowRNN", "gru", "lstm", "rnn"]
