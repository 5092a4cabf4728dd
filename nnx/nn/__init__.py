"""Layers, containers and losses (PyTorch names and shapes)."""
from .activation import Arctan, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .container import Identity, Sequential
from .linear import Linear
from .loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss
from .module import Module
from .parameter import Parameter

__all__ = ["Module", "Parameter", "Sequential", "Identity", "Linear", "ReLU", "LeakyReLU",
           "Sigmoid", "Tanh", "Arctan", "Softmax", "MSELoss", "L1Loss", "BCELoss",
           "BCEWithLogitsLoss", "CrossEntropyLoss"]
