"""Import TensorFlow with tf-keras (Keras 2) as `keras`, quietly, the same way everywhere.

TF_USE_LEGACY_KERAS must be set before TensorFlow is first imported: pruning
(tensorflow-model-optimization) and tf2onnx's Keras path work only on tf-keras models, and
importing tfmot flips the switch anyway, so `tf.keras` would otherwise change meaning mid-run.
"""
import os

from feredge.edge.native_log import EVERYTHING, banners_filtered

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def native_stderr_silenced():
    """TensorFlow's C++ side prints oneDNN/CUDA banners (and a cuInit 'error' on every machine
    without a GPU) straight to file descriptor 2 before its log level applies. Python
    exceptions still propagate; FEREDGE_TF_VERBOSE=1 shows everything."""
    return banners_filtered(EVERYTHING, verbose_env="FEREDGE_TF_VERBOSE")


with native_stderr_silenced():
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

    tf.config.list_physical_devices()  # device discovery, where the cuInit message comes from

CPU_DEVICES_ENV = "FEREDGE_CPU_DEVICES"


def split_cpu(devices: int) -> int:
    """Make the CPU `devices` logical devices (CPU:0..CPU:N-1), so that MirroredStrategy has
    replicas on a machine without GPUs. Logical devices can only be set before TensorFlow
    initialises its devices (before the first op runs): asking for another number afterwards raises
    RuntimeError; asking for the number already there is fine. Returns the number of CPU devices."""
    if devices < 1:
        raise ValueError(f"the CPU cannot be split into {devices} devices")
    [cpu] = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != devices:
            raise RuntimeError(f"TensorFlow already runs on {have} CPU device(s), so it cannot be split into "
                               f"{devices} now: split it before anything runs ({CPU_DEVICES_ENV}={devices} in the "
                               f"environment, or `feredge train --cpu-devices {devices}` in a fresh process)") from None
    return devices


if os.environ.get(CPU_DEVICES_ENV, "").strip():  # e.g. a test process that needs two replicas on one CPU
    split_cpu(int(os.environ[CPU_DEVICES_ENV]))


def generator_dataset(batches, *shapes):
    """float32 batches from a Python generator function as tf.data, two prefetched, autotuning off.

    Autotuning's optimisation thread sleeps in periods that double from 10 ms up to 60 s, and
    destroying the iterator at the end of a fit sometimes waits out the current sleep: epochs
    took exactly 40.95 s or 141.9 s where the work took 9 s or 86 s. A fixed prefetch needs no tuning.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    signature = tuple(tf.TensorSpec((None, *shape), tf.float32) for shape in shapes)
    return tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2).with_options(options)


__all__ = ["tf", "keras", "native_stderr_silenced", "generator_dataset", "split_cpu", "CPU_DEVICES_ENV"]
