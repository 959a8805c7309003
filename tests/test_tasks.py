"""The core's task, head and sampler interfaces, each proven by a toy task of one coming
paper's shape, trained two epochs through the same ``fit`` and runner on the synthetic set:
a single-label classifier on balanced batches (P2), a label-sequence decoder with teacher
forcing in training and free decoding in prediction (P1), and an image-to-text decoder with
attention maps in its outputs (P4). And ``predict_step`` sees the images only."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score
from torch import nn

from annotlib.data import DeviceBatches
from annotlib.data.samplers import MPerClass
from annotlib.data.synthetic import generate_synthetic
from annotlib.io import read_json
from annotlib.metrics import annotation_metrics
from annotlib.models import HEADS, ImageModel
from annotlib.tasks import TASKS, Task, create_task
from annotlib.train import TrainConfig, load_run, predict, run_annotation


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", num_images=240, image_size=32, seed=3)


def toy_config(root, task, head, **changes):
    return TrainConfig(dataset="synthetic", data_root=str(root), image_size=32, backbone="resnet10t", epochs=2,
                       batch_size=16, lr=3e-3, normalize="dataset", progress=False, seed=0, device="cpu",
                       task=task, head=head, loss="cross_entropy", **changes)


# --- P2's shape: one category per image, batches holding every category ---------------------

class CategoryTask(Task):
    name = "toy_category"
    selection = ("accuracy", "max")

    def __init__(self, loss, m: int = 2):
        super().__init__(loss)
        self.m = m

    def model_sizes(self, train):
        return {"num_classes": len(train.categories)}

    def fields(self, split):
        return {"category_ids": split.require("category_ids", self.name)}

    def sampler(self, split, batch_size):
        return MPerClass(split.category_ids, self.m, batch_size)

    def training_step(self, model, batch):
        return self.loss(model(batch["image"]).float(), batch["category_ids"])

    def predict_step(self, model, images):
        return model(images).float()

    def evaluate(self, outputs, split):
        return {"accuracy": (outputs.argmax(1).cpu() == split.category_ids).float().mean().item()}


# --- P1's shape: a label sequence, teacher-forced in training, decoded freely in prediction --

class SequenceModel(ImageModel):
    def __init__(self, backbone, num_classes, **kwargs):
        super().__init__(backbone, **kwargs)
        self.num_classes = num_classes  # END is index num_classes, START index num_classes + 1
        self.embed_label = nn.Embedding(num_classes + 2, 16)
        self.cell = nn.GRUCell(16, self.num_features)
        self.out = nn.Linear(self.num_features, num_classes + 1)

    def forward(self, x, sequence):
        """Step logits B x T x (C+1), step t predicting sequence[:, t] from the labels before it."""
        h = self.embed(x)
        previous = torch.cat([torch.full_like(sequence[:, :1], self.num_classes + 1), sequence[:, :-1]], 1)
        steps = []
        for t in range(sequence.shape[1]):
            h = self.cell(self.embed_label(previous[:, t].clamp(min=0)), h)
            steps.append(self.out(h))
        return torch.stack(steps, 1)

    @torch.no_grad()
    def decode(self, x, max_length):
        """Greedy decoding without repeats; the labels emitted before END, multi-hot."""
        h = self.embed(x)
        token = torch.full((len(x),), self.num_classes + 1, dtype=torch.long, device=x.device)
        emitted = torch.zeros(len(x), self.num_classes + 1, dtype=torch.bool, device=x.device)
        open_ = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(max_length):
            h = self.cell(self.embed_label(token), h)
            logits = self.out(h).masked_fill(emitted, float("-inf"))
            token = logits.argmax(1)
            open_ &= token != self.num_classes
            emitted |= F.one_hot(token, self.num_classes + 1).bool() & open_[:, None]
        return emitted[:, :-1]


class SequenceTask(Task):
    name = "toy_sequence"
    selection = ("OF1", "max")

    def setup(self, splits, seed):
        self.order = torch.argsort(-(splits["train"].labels == 1).sum(0), stable=True)  # most frequent first
        self.max_length = int((splits["train"].labels == 1).sum(1).max()) + 1
        return splits

    def fields(self, split):
        return {"sequence": sequences(split.labels, self.order, self.max_length)}

    def training_step(self, model, batch):
        logits = model(batch["image"], sequence=batch["sequence"])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["sequence"].flatten(), ignore_index=-1)

    def predict_step(self, model, images):
        return {"labels": model.decode(images, self.max_length).int()}

    def evaluate(self, outputs, split):
        return {"OF1": annotation_metrics(outputs["labels"].float().cpu(), split.labels, 0.5)["OF1"]}


def sequences(labels, order, length):
    """Each image's positive labels in ``order``, then END (= C), then -1 padding."""
    c = labels.shape[1]
    out = torch.full((len(labels), length), -1, dtype=torch.long)
    for i, row in enumerate(labels):
        positives = [int(k) for k in order if row[k] == 1]
        out[i, :len(positives) + 1] = torch.tensor(positives + [c])
    return out


# --- P4's shape: a caption decoded with attention over the feature map ------------------------

class CaptionModel(ImageModel):
    def __init__(self, backbone, vocab_size, **kwargs):
        super().__init__(backbone, **kwargs)
        self.words = nn.Embedding(vocab_size, 16)
        self.cell = nn.GRUCell(16 + self.num_features, 32)
        self.query = nn.Linear(32, self.num_features)
        self.out = nn.Linear(32, vocab_size)

    def step(self, grid, word, h):
        attention = torch.softmax(torch.einsum("bkd,bd->bk", grid, self.query(h)), 1)
        context = torch.einsum("bk,bkd->bd", attention, grid)
        h = self.cell(torch.cat([self.words(word), context], 1), h)
        return self.out(h), h, attention

    def forward(self, x, tokens):
        grid = self.features(x).float().flatten(2).transpose(1, 2)  # B x HW x D
        h = grid.new_zeros(len(x), 32)
        logits = []
        for t in range(tokens.shape[1] - 1):
            out, h, _ = self.step(grid, tokens[:, t], h)
            logits.append(out)
        return torch.stack(logits, 1)

    @torch.no_grad()
    def decode(self, x, length, start):
        grid = self.features(x).float().flatten(2).transpose(1, 2)
        h, word = grid.new_zeros(len(x), 32), torch.full((len(x),), start, device=x.device)
        words, maps = [], []
        for _ in range(length):
            out, h, attention = self.step(grid, word, h)
            word = out.argmax(1)
            words.append(word)
            maps.append(attention)
        return torch.stack(words, 1), torch.stack(maps, 1)


class CaptionTask(Task):
    name = "toy_caption"
    flips = False  # "left" and "right" in a caption would lie
    selection = ("length_error", "min")
    length = 8

    def setup(self, splits, seed):
        words = sorted({w for caps in splits["train"].captions for c in caps for w in c.lower().split()})
        self.vocabulary = ["<pad>", "<start>", "<end>", "<unk>", *words]
        return splits

    def model_sizes(self, train):
        return {"vocab_size": len(self.vocabulary)}

    def encode(self, caption):
        index = {w: i for i, w in enumerate(self.vocabulary)}
        ids = [1, *(index.get(w, 3) for w in caption.lower().split())][:self.length] + [2]
        return ids + [0] * (self.length + 1 - len(ids))

    def fields(self, split):
        return {"tokens": torch.tensor([self.encode(caps[0]) for caps in split.captions])}

    def training_step(self, model, batch):
        logits = model(batch["image"], tokens=batch["tokens"])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["tokens"][:, 1:].flatten(), ignore_index=0)

    def predict_step(self, model, images):
        words, attention = model.decode(images, self.length, start=1)
        text = [" ".join(self.vocabulary[w] for w in row.tolist()).split(" <end>")[0] for row in words]
        return {"captions": text, "attention": attention.float()}

    def evaluate(self, outputs, split):
        errors = [abs(len(c.split()) - len(refs[0].split())) for c, refs in zip(outputs["captions"], split.captions)]
        return {"length_error": sum(errors) / len(errors)}

    def state_dict(self):
        return {"vocabulary": self.vocabulary}

    def load_state_dict(self, state):
        assert state["vocabulary"] == self.vocabulary  # rebuilt from the same training captions


@pytest.fixture
def registered(monkeypatch):
    for name, task in (("toy_category", CategoryTask), ("toy_sequence", SequenceTask),
                       ("toy_caption", CaptionTask)):
        monkeypatch.setitem(TASKS, name, task)
    monkeypatch.setitem(HEADS, "toy_sequence", SequenceModel)
    monkeypatch.setitem(HEADS, "toy_caption", CaptionModel)


def test_a_single_label_task_trains_on_balanced_batches(root, tmp_path, registered):
    cfg = toy_config(root, "toy_category", "multilabel", task_kwargs={"m": 2})
    metrics = run_annotation(cfg, tmp_path)
    run = load_run(tmp_path)
    for batch in run.batches("train", train=True):
        assert (torch.bincount(batch["category_ids"], minlength=8) >= 2).all()
    predicted = run.outputs("test").argmax(1)
    assert metrics["test"]["accuracy"] == pytest.approx(accuracy_score(run.splits["test"].category_ids, predicted))
    assert metrics["selection"]["metric"] == "accuracy" and list(metrics["val"]) == ["accuracy"]
    assert (tmp_path / "history.csv").read_text().splitlines()[0].split(",")[3] == "val_accuracy"


def test_a_label_sequence_task_is_teacher_forced_in_training_and_decodes_freely(root, tmp_path, registered,
                                                                                monkeypatch):
    seen = []
    original = SequenceModel.forward
    monkeypatch.setattr(SequenceModel, "forward", lambda self, x, sequence: seen.append(sequence) or
                        original(self, x, sequence))
    metrics = run_annotation(toy_config(root, "toy_sequence", "toy_sequence"), tmp_path)
    assert seen and all(s.dtype == torch.long and (s == 22).any(1).all() for s in seen)  # END in every row
    run = load_run(tmp_path)
    outputs = run.outputs("test")
    assert outputs["labels"].shape == run.splits["test"].labels.shape
    expected = annotation_metrics(outputs["labels"].float(), run.splits["test"].labels, 0.5)["OF1"]
    assert metrics["test"]["OF1"] == pytest.approx(expected)
    hand = sequences(torch.tensor([[0, 1, 0, 1], [1, 0, -1, 0]]), torch.tensor([3, 0, 1, 2]), 3)
    assert hand.tolist() == [[3, 1, 4], [0, 4, -1]]


def test_an_image_to_text_task_returns_captions_and_attention_maps(root, tmp_path, registered):
    with pytest.raises(ValueError, match="do not survive flips; set hflip=false vflip=false"):
        run_annotation(toy_config(root, "toy_caption", "toy_caption"), tmp_path / "flipped")
    assert not (tmp_path / "flipped").exists()  # refused before anything was written
    cfg = toy_config(root, "toy_caption", "toy_caption", hflip=False, vflip=False)
    metrics = run_annotation(cfg, tmp_path / "run")
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]
    errors = [float(row.split(",")[3]) for row in history]
    assert metrics["selection"] == {"split": "val", "metric": "length_error", "mode": "min",
                                    "epoch": 1 + errors.index(min(errors))}
    run = load_run(tmp_path / "run")
    outputs = run.outputs("test")
    assert len(outputs["captions"]) == len(run.splits["test"]) and isinstance(outputs["captions"][0], str)
    attention = outputs["attention"]
    assert attention.shape[:2] == (len(run.splits["test"]), CaptionTask.length)
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:2]))
    assert read_json(tmp_path / "run" / "task.json")["vocabulary"] == run.task.vocabulary


def test_predict_step_gets_the_images_and_nothing_else():
    images = torch.randint(0, 256, (6, 8, 8, 3), dtype=torch.uint8).numpy()
    batches = DeviceBatches(images, {"labels": torch.ones(6, 3), "tokens": torch.zeros(6, 4)}, batch_size=4)
    calls = []

    def step(*args, **kwargs):
        calls.append((args, kwargs))
        return args[1].mean((1, 2, 3))

    model = nn.Identity()
    out = predict(model, step, batches, bf16=False)
    assert [len(args) for args, _ in calls] == [2, 2] and all(not kwargs for _, kwargs in calls)
    assert all(args[0] is model and isinstance(args[1], torch.Tensor) and args[1].shape[1:] == (3, 8, 8)
               for args, _ in calls)
    expected = torch.cat([b["image"] for b in batches]).mean((1, 2, 3))
    torch.testing.assert_close(out, expected)


def test_outputs_gather_tensors_lists_and_dicts_in_order():
    from annotlib.train.loop import _gather
    chunks = [{"s": torch.tensor([1, 2]), "t": ["a", "b"]}, {"s": torch.tensor([3]), "t": ["c"]}]
    gathered = _gather(chunks)
    assert gathered["s"].tolist() == [1, 2, 3] and gathered["t"] == ["a", "b", "c"]
    with pytest.raises(TypeError, match="outputs must be tensors, lists or dicts"):
        _gather([3])


def test_unknown_task_and_bad_options_are_named():
    with pytest.raises(ValueError, match=r"unknown task 'nope'; known: multilabel"):
        create_task("nope", "bce")
    with pytest.raises(ValueError, match=r"task 'multilabel' or loss 'bce': .*unexpected keyword argument 'm'"):
        create_task("multilabel", "bce", m=3)


def test_a_split_without_the_tasks_field_is_named():
    from annotlib.data import Split
    split = Split("toy", "train", [], ["a.png"])
    with pytest.raises(ValueError, match=r"toy/train: the toy_category task needs category_ids"):
        CategoryTask(nn.CrossEntropyLoss()).fields(split)
    with pytest.raises(ValueError, match=r"toy/train: the multilabel task needs labels"):
        create_task("multilabel", "bce").setup({"train": split}, seed=0)
