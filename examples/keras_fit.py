"""MAML on Omniglot 5-way 1-shot with Keras fit(): train, evaluate, export (docs/keras.md).

    python examples/keras_fit.py [WORKDIR] [--smoke]   # --smoke: small archives, a few steps
"""
import json
import sys

import keras

import tfmeta
from tfmeta.data import episodes, omniglot
from tfmeta.keras import MetaModel

workdir = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "--smoke" else "/tmp/keras_maml"
smoke = "--smoke" in sys.argv
data = omniglot.load(subset="small" if smoke else "full")  # offline: $TFMETA_OMNIGLOT_ARCHIVES
spec = episodes.EpisodeSpec(ways=5, shots=1, queries=1)


def stream(split, seed):  # infinite and deterministic: a resumed run sees the same episodes
    return episodes.episode_dataset(omniglot.split(data, split=split), spec, seed=seed,
                                    batch_size=8 if smoke else 32)


model = tfmeta.omniglot_conv4(5, filters=16 if smoke else 64, seed=0)
meta = MetaModel(tfmeta.MAML(model, inner_lr=0.4, inner_steps=1, eval_inner_steps=3,
                             bn_mode="support"))
meta.compile(optimizer=keras.optimizers.Adam(1e-3), steps_per_execution=10)
meta.fit(stream("train", 0), epochs=2 if smoke else 60, steps_per_epoch=10 if smoke else 100,
         validation_data=stream("validation", 1), validation_steps=10,
         callbacks=[keras.callbacks.TensorBoard(f"{workdir}/logs"),
                    keras.callbacks.BackupAndRestore(f"{workdir}/backup"),
                    keras.callbacks.EarlyStopping("val_accuracy", mode="max", patience=10,
                                                  restore_best_weights=True)])
result = meta.evaluate(stream("test", 2), steps=10 if smoke else 20, return_dict=True)
# Omniglot episodes hold inverted strokes: the export inverts served pixels the same way.
meta.export(f"{workdir}/export", input_transform="omniglot", shots=1, queries=1)
print(json.dumps(result))
