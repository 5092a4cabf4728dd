"""Layers, containers and losses (PyTorch names and shapes)."""
from .batchnorm import BatchNorm1d, BatchNorm2d
from .conv import Conv1d, Conv2d
from .conv_transpose import ConvTranspose2d
from .embedding import Embedding
from .normalization import LayerNorm
from .dropout import Dropout
from .flatten import Flatten
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .residual import Add, Residual
from .rnn import GRU, LSTM, RNN, detach_state
from .rnn_cells import GRUCell, LSTMCell, RNNCell
from .sequence_loss import SequenceCrossEntropyLoss, SequenceMSELoss
from .activation import GELU, Arctan, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .container import Identity, Sequential
from .linear import Linear
from .loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, HuberLoss, KLDivLoss, L1Loss, \
    MSELoss, NLLLoss, SmoothL1Loss
from .module import Module
from .module_list import ModuleDict, ModuleList
from .parameter import Parameter
from .tape import Context, enable_grad, inference_mode, is_grad_enabled, no_grad
from . import functional

__all__ = ["Module", "Parameter", "Sequential", "Identity", "Linear", "ReLU", "LeakyReLU",
           "Sigmoid", "Tanh", "Arctan", "Softmax", "MSELoss", "L1Loss", "BCELoss",
           "BCEWithLogitsLoss", "CrossEntropyLoss",
           "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d",
           "BatchNorm2d", "Dropout", "Flatten", "Residual", "Add", "ModuleList", "ModuleDict"]
__all__ += ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "detach_state",
            "SequenceMSELoss", "SequenceCrossEntropyLoss", "Context",
            "no_grad", "enable_grad", "inference_mode", "is_grad_enabled"]
__all__ += ["NLLLoss", "HuberLoss", "SmoothL1Loss", "KLDivLoss"]
__all__ += ["Conv1d", "ConvTranspose2d", "Embedding", "LayerNorm", "GELU", "LogSoftmax"]
