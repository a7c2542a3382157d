"""hfcf's training pieces on tiny inputs with known answers: the lazy Adam step and the size-aware defaults."""
import dataclasses

import pytest
import torch

from hfcf import kinds, training
from hfcf.errors import DataError


def test_lazy_adam_without_penalty_matches_torch_sparse_adam():
    """On a sparse gradient, `LazyAdam` is Adam on the rows looked up (repeated rows summed): torch's SparseAdam."""
    torch.manual_seed(0)
    ours, theirs = torch.nn.Embedding(6, 3, sparse=True), torch.nn.Embedding(6, 3, sparse=True)
    theirs.weight.data.copy_(ours.weight.data)
    start = ours.weight.detach().clone()
    # eps tiny: SparseAdam adds it before the bias correction, fastai's Adam (and ours) after
    lazy = training.LazyAdam([ours.weight], lr=0.1, mom=0.9, sqr_mom=0.99, eps=1e-10)
    reference = torch.optim.SparseAdam([theirs.weight], lr=0.1, betas=(0.9, 0.99), eps=1e-10)
    batches = [torch.tensor([1, 1, 2]), torch.tensor([2, 4]), torch.tensor([1, 4, 4, 4])]
    for rows in batches:
        target = torch.arange(len(rows) * 3, dtype=torch.float32).reshape(len(rows), 3) / 5
        lazy.zero_grad()
        ((ours(rows) - target) ** 2).sum().backward()
        lazy.step()
        reference.zero_grad()
        ((theirs(rows) - target) ** 2).sum().backward()
        reference.step()
        torch.testing.assert_close(ours.weight.data, theirs.weight.data)
    untouched = [0, 3, 5]
    assert torch.equal(ours.weight.data[untouched], start[untouched])  # rows no batch looked up never move
    assert torch.count_nonzero(lazy.state[ours.weight]["moments"][untouched]) == 0


def test_lazy_adam_shares_the_rows_of_tables_looked_up_alike_and_only_theirs():
    """The dot model looks up its factors and biases with the same rows: one torch.unique serves both tables. Rows
    of the same count but other values (the next batch, the other side's table) must not reuse it."""
    torch.manual_seed(0)
    ours = [torch.nn.Embedding(6, 2, sparse=True), torch.nn.Embedding(6, 1, sparse=True),
            torch.nn.Embedding(6, 3, sparse=True)]
    theirs = [torch.nn.Embedding(6, width, sparse=True) for width in (2, 1, 3)]
    for mine, reference_table in zip(ours, theirs):
        reference_table.load_state_dict(mine.state_dict())
    lazy = training.LazyAdam([table.weight for table in ours], lr=0.1, mom=0.9, sqr_mom=0.99, eps=1e-10)
    reference = torch.optim.SparseAdam([table.weight for table in theirs], lr=0.1, betas=(0.9, 0.99), eps=1e-10)
    for users, items in (([1, 1, 3], [2, 4, 4]), ([2, 4, 4], [1, 1, 3]), ([5, 0, 5], [0, 5, 5])):
        for tables, optimizer in ((ours, lazy), (theirs, reference)):
            optimizer.zero_grad()
            lookups = [tables[0](torch.tensor(users)), tables[1](torch.tensor(users)), tables[2](torch.tensor(items))]
            sum((lookup ** 2).sum() * (i + 1) for i, lookup in enumerate(lookups)).backward()
            optimizer.step()
    for mine, reference_table in zip(ours, theirs):
        torch.testing.assert_close(mine.weight.data, reference_table.weight.data)


def test_lazy_adam_penalty_is_per_rating():
    """wd is the gradient of wd/2 * mean over the batch of |row|^2: a row looked up twice in a batch of four
    gains wd * row * 2/4. With a zero loss gradient, Adam's first step is then -lr * sign(row)."""
    embedding = torch.nn.Embedding(3, 2, sparse=True)
    embedding.weight.data = torch.tensor([[1.0, -2.0], [0.5, -0.25], [3.0, 4.0]])
    rows = torch.tensor([1, 1, 2, 2])
    lazy = training.LazyAdam([embedding.weight], lr=0.01, wd=0.5, eps=1e-12)
    lazy.zero_grad()
    (embedding(rows) * 0).sum().backward()
    lazy.step()
    expected = torch.tensor([[1.0, -2.0], [0.5 - 0.01, -0.25 + 0.01], [3.0 - 0.01, 4.0 - 0.01]])
    torch.testing.assert_close(embedding.weight.data, expected, atol=1e-6, rtol=0)
    state = lazy.state[embedding.weight]
    torch.testing.assert_close(state["moments"][1, 0] / 0.1, 0.5 * embedding.weight.new_tensor([0.5, -0.25]) * 2 / 4)


def test_lazy_adam_on_a_dense_parameter_is_adam_with_l2():
    """The nn's layers get dense gradients: plain Adam with wd * p added to the gradient, as torch's Adam."""
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    theirs.load_state_dict(ours.state_dict())
    lazy = training.LazyAdam(list(ours.parameters()), lr=0.05, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.1)
    reference = torch.optim.Adam(theirs.parameters(), lr=0.05, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.1)
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, optimizer in ((ours, lazy), (theirs, reference)):
            optimizer.zero_grad()
            (model(x) ** 2).mean().backward()
            optimizer.step()
    for mine, reference_parameter in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine.data, reference_parameter.data)


def test_small_data_keeps_the_tuned_defaults_with_batches_capped():
    small = kinds.defaults_for(80_000, n_users=943)
    assert {kind: small[kind] for kind in ("dot", "nn")} == {kind: kinds.KINDS[kind].small for kind in ("dot", "nn")}
    assert small["topn"] == dataclasses.replace(kinds.KINDS["topn"].small, bs=123)  # 4 sqrt(943) users a batch
    assert all(settings.epochs == 0 for settings in small.values())  # every model's epochs chosen by the data
    tiny = kinds.defaults_for(4_800)
    assert all(settings.bs <= 300 for settings in tiny.values())
    assert not any(getattr(settings, "lazy", False) for settings in tiny.values())


@pytest.mark.parametrize("n_train, dot_bs, nn_bs", [(800_000, 8192, 2048), (2_000_000, 16384, 4096),
                                                    (4_000_000, 32768, 8192), (20_000_000, 65536, 16384),
                                                    (200_000_000, 65536, 16384)])
def test_large_data_batches_follow_its_size_with_lazy_updates(n_train, dot_bs, nn_bs):
    chosen = kinds.defaults_for(n_train, n_users=n_train // 140)
    assert (chosen["dot"].bs, chosen["nn"].bs) == (dot_bs, nn_bs)
    assert chosen["dot"].lazy and chosen["nn"].lazy
    assert 64 <= chosen["topn"].bs <= 8192


@pytest.mark.parametrize("n_train, n_items, units", [(80_000, 1_682, 50), (20_000_000, 27_464, 128),
                                                     (20_000_000, 32_768, 128), (20_000_000, 32_769, 64),
                                                     (20_000_000, 60_000, 64), (25_000_000, 87_000, 64),
                                                     (25_000_000, 500_000, 64), (80_000, 500_000, 50)])
def test_the_nn_first_layer_is_as_wide_as_ranking_the_catalogue_affords(n_train, n_items, units):
    """A request ranks every title through the first layer: n_items x units activations, kept within a budget by
    halving, but not below 64 units (nor MovieLens 100k's 50 to 25)."""
    chosen = kinds.defaults_for(n_train, n_users=n_train // 140, n_items=n_items)
    assert chosen["nn"].layers == (units,)


def test_settings_are_refused_when_made():
    """Each kind's settings check themselves: a model that cannot train is refused before any work."""
    with pytest.raises(DataError, match="topn: history dropout must be at least 0 and below 1"):
        dataclasses.replace(kinds.KINDS["topn"].small, embed_p=1.0)
    with pytest.raises(DataError, match="nn: --bs must be at least 2"):
        dataclasses.replace(kinds.KINDS["nn"].small, bs=1)
    assert dataclasses.replace(kinds.KINDS["nn"].small, bs=1, batchnorm=False).bs == 1  # checked with all of it in
    with pytest.raises(DataError, match="dot: --epochs must be at least 1"):
        dataclasses.replace(kinds.KINDS["dot"].small, epochs=0, max_epochs=0)
    with pytest.raises(DataError, match="dot: --epochs must be at least 1"):
        dataclasses.replace(kinds.KINDS["dot"].small, epochs=-1)
    assert "lazy" not in kinds.KINDS["topn"].Settings.names()  # a setting only the rating models have


@pytest.mark.parametrize("batchnorm, lazy, dense_decayed", [(True, False, True), (False, False, False),
                                                             (True, True, False), (False, True, False)])
def test_the_nn_l2_falls_on_the_embeddings_but_in_fastais_own_recipe(synthetic_dataset, batchnorm, lazy,
                                                                     dense_decayed):
    """Without BatchNorm an L2 on the dense layers held the nn at the biases, and with lazy updates (a penalty per
    rating) it cost 10 points of signal at 5M (BENCHMARKS.md, Scale); fastai's Adam with BatchNorm keeps the book's
    weight decay on every layer."""
    import dataclasses

    from hfcf import pipeline, vocab

    split = pipeline.make_split(synthetic_dataset, "random", 0.2, 0)
    users, items = vocab.from_ratings(split.train, split.valid)
    settings = dataclasses.replace(kinds.KINDS["nn"].small, epochs=1, bs=256, batchnorm=batchnorm, lazy=lazy)
    fitted = training.fit(["nn"], {"nn": settings}, split.train, split.valid, users, items, (0.5, 5.5), 0,
                          log=lambda *_: None)["nn"]
    model, state = fitted.learner.model, fitted.learner.opt.state
    dense = [layer.weight for layer in model.layers.modules() if isinstance(layer, torch.nn.Linear)]  # biases: never
    assert dense and all(state[p].get("do_wd", True) is dense_decayed for p in dense)
    assert all(state[p].get("do_wd", True) for p in model.embeds.parameters())


@pytest.mark.parametrize("n_users", [100, 943, 10_000, 15_000, 160_000, 10_000_000])
def test_the_topn_batch_follows_the_users_smoothly(n_users):
    """No step at any size: one more user never moves the batch by more than one, and the steps an epoch grow."""
    bs, next_bs = kinds.KINDS["topn"].batch(n_users), kinds.KINDS["topn"].batch(n_users + 1)
    assert 0 <= next_bs - bs <= 1 and 32 <= bs <= 8192
    assert n_users / kinds.KINDS["topn"].batch(n_users) <= 4 * n_users / kinds.KINDS["topn"].batch(4 * n_users)


class ScriptedLearner:
    """Stands in for a fastai Learner whose held-out figure after each one-cycle run is known in advance."""

    def __init__(self, figures, steps=100):
        self.figures, self.runs = list(figures), []
        self.dls = type("dls", (), {"train": range(steps)})()
        self.recorder = type("recorder", (), {"metric_names": ["epoch", "train_loss", "valid_loss", "_rmse", "time"],
                                              "values": []})()

    def fit_one_cycle(self, epochs, lr, wd=None):
        self.runs.append(epochs)
        self.recorder.values = [[0.0, 0.0, self.figures.pop(0)]] * epochs


def test_choose_epochs_keeps_the_best_run_and_stops_at_the_first_that_is_no_better():
    recipe = kinds.KINDS["dot"]
    settings = kinds.KINDS["dot"].small
    learn = ScriptedLearner([1.0, 0.95, 0.9, 0.92, 0.5])
    epochs, figure, tried = training.choose_epochs(learn, recipe, settings, wd=0.0)
    assert learn.runs == [1, 1, 1, 2]  # 64 steps at 100 a batch: one epoch first, then half the epochs so far
    assert (epochs, figure) == (3, 0.9) and tried == [(1, 1.0), (2, 0.95), (3, 0.9), (5, 0.92)]


def test_choose_epochs_takes_at_least_its_first_steps_and_stops_at_max_epochs():
    settings = dataclasses.replace(kinds.KINDS["topn"].small, max_epochs=20)
    learn = ScriptedLearner([0.1, 0.2, 0.3, 0.4], steps=8)
    learn.recorder.metric_names = ["epoch", "train_loss", "valid_loss", "precision@10", "time"]
    epochs, figure, tried = training.choose_epochs(learn, kinds.KINDS["topn"], settings, wd=0.0)
    assert learn.runs == [8, 4, 6, 2]  # 8 epochs of 8 steps first; the last run stops at max_epochs
    assert (epochs, figure) == (20, 0.4)  # higher is better for precision


def test_a_diverged_search_chooses_nothing():
    learn = ScriptedLearner([float("nan")])
    epochs, _, _ = training.choose_epochs(learn, kinds.KINDS["dot"], kinds.KINDS["dot"].small, wd=0.0)
    assert epochs == 0


def test_histories_split_holds_out_a_share_of_each_users_titles():
    import numpy as np
    import torch

    lengths = [1, 2, 10, 11, 0, 40]
    starts = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]))
    items = torch.arange(int(starts[-1]))
    whole = training.Histories(starts, items, items.float())
    kept, held = whole.split(0.1, np.random.default_rng(0))
    assert held.lengths().tolist() == [0, 1, 1, 2, 0, 4]  # a tenth, rounded up; never a user's only title
    assert (kept.lengths() + held.lengths()).tolist() == lengths
    for user in range(len(lengths)):
        both = torch.cat([kept.items[kept.starts[user]:kept.starts[user + 1]],
                          held.items[held.starts[user]:held.starts[user + 1]]])
        assert sorted(both.tolist()) == list(range(int(starts[user]), int(starts[user + 1])))
    assert torch.equal(held.weights, held.items.float())  # weights travel with their titles


def test_the_card_says_how_each_models_epochs_were_chosen(synthetic_dataset, tmp_path):
    from hfcf import pipeline

    split = pipeline.make_split(synthetic_dataset, "random", 0.2, 0)
    settings = kinds.defaults_for(*pipeline.training_size(split))
    settings["dot"] = dataclasses.replace(settings["dot"], epochs=2)
    config, _ = pipeline.train_and_save(synthetic_dataset, split, tmp_path / "m", kinds=("dot", "topn"),
                                     settings=settings, seed=0, log=lambda *_: None)
    how = config["models"]["topn"]["epochs_chosen"]
    assert config["models"]["topn"]["epochs"] == max(how["tried"], key=lambda run: run[1])[0] >= 1
    assert config["models"]["dot"]["epochs_chosen"] is None
    card = (tmp_path / "m" / "README.md").read_text()
    assert f"{config['models']['topn']['epochs']} epochs chosen on a random share of each user's training titles" \
        in card
    assert "2 epochs, as asked for (`--epochs`)" in card
