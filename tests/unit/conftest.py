"""torch's dynamo, imported lazily by some torch calls (nn.init under transformers' model
construction), wraps sys.intern in a polyfill; ansible's module_utils, loaded into the same process by
the unit tests of our filter and callback plugins, replaces sys.intern with an object dynamo refuses
("substitute_in_graph expects a function"). Only these tests mix the two in one process: dynamo is
imported first, before any test loads ansible."""

try:
    import torch._dynamo  # noqa: F401
except ImportError:  # a controller without torch: nothing to protect
    pass
