"""hfcf's training pieces on tiny inputs with known answers: the lazy Adam step and the size-aware defaults."""
import dataclasses

import pytest
import torch

from hfcf import kinds, training
from hfcf.errors import DataError


def fastai_adam(params, lr, mom, sqr_mom, eps, wd):
    from fastai.optimizer import Adam

    return Adam(params, lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)


def run_both(batches, tables, lr=0.05, mom=0.9, sqr_mom=0.9, eps=1e-10, wd=0.0, warm_up=0):
    """The same losses stepped by `LazyAdam` on sparse tables and by fastai's Adam on dense copies of them; every
    table is looked up with the same rows. The loss is linear in the rows, so a row's gradient does not depend on
    where the idle steps left it (a lazy row is looked up before it catches up). `warm_up` steps that touch every
    row come first: past them the bias corrections are ~1, the one thing the catch-up takes from the step that
    touches a row again."""
    torch.manual_seed(0)
    ours = [torch.nn.Embedding(rows, width, sparse=True) for rows, width in tables]
    theirs = [torch.nn.Embedding(rows, width) for rows, width in tables]
    for mine, reference in zip(ours, theirs):
        reference.load_state_dict(mine.state_dict())
    lazy = training.LazyAdam([table.weight for table in ours], lr=lr, mom=mom, sqr_mom=sqr_mom, eps=eps, wd=wd)
    dense = fastai_adam([table.weight for table in theirs], lr, mom, sqr_mom, eps, wd)
    everyone = list(range(min(rows for rows, _ in tables)))
    for rows in [everyone] * warm_up + batches:
        for models, optimizer in ((ours, lazy), (theirs, dense)):
            optimizer.zero_grad()
            lookups = [table(torch.tensor(rows)) for table in models]
            sum((lookup * torch.tensor(rows)[:, None].sub(1.5)).sum() * (i + 1)
                for i, lookup in enumerate(lookups)).backward()
            optimizer.step()
    return ours, theirs, lazy


def test_lazy_adam_takes_fastais_adam_step_on_the_rows_looked_up():
    """Every row looked up at every step: the lazy step is fastai's Adam, decoupled weight decay included."""
    ours, theirs, _ = run_both([[0, 1, 1, 2, 3, 4]] * 4, [(5, 3)], lr=0.1, sqr_mom=0.99, wd=0.5)
    torch.testing.assert_close(ours[0].weight.data, theirs[0].weight.data)


def test_rows_a_batch_skips_catch_up_on_momentum_and_decay_when_next_looked_up():
    """Rows idle for a few steps end where fastai's dense Adam takes them (its momentum keeps moving them, and the
    decay shrinks them, while no gradient comes)."""
    batches = [[0, 0, 1], [2], [2, 3], [1], [1, 1], [0, 1, 2, 3]]
    ours, theirs, lazy = run_both(batches, [(4, 3)], wd=0.3, warm_up=300)
    torch.testing.assert_close(ours[0].weight.data, theirs[0].weight.data, rtol=1e-4, atol=1e-5)
    assert lazy.state[ours[0].weight]["idle_since"].tolist() == [306] * 4  # every row brought up to date


def test_rows_never_looked_up_keep_their_values():
    ours, _, _ = run_both([[0, 1]] * 3, [(4, 2)], wd=0.3)
    torch.manual_seed(0)  # run_both's seed: the tables' first values
    assert torch.equal(ours[0].weight.data[2:], torch.nn.Embedding(4, 2).weight.data[2:])


def test_lazy_adam_shares_the_rows_of_tables_looked_up_alike_and_only_theirs():
    """The dot model looks up its factors and biases with the same rows: one torch.unique serves both tables. Rows
    of the same count but other values (the next batch) must not reuse it. The last batch brings every row up to
    date."""
    batches = [[1, 1, 3], [2, 4, 4], [1, 1, 3], [5, 0, 5], [0, 1, 2, 3, 4, 5]]
    ours, theirs, _ = run_both(batches, [(6, 2), (6, 1), (6, 3)], warm_up=300)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine.weight.data, reference.weight.data, rtol=1e-4, atol=1e-5)


def test_lazy_adam_on_a_dense_parameter_is_fastais_adam():
    """The nn's layers get dense gradients: fastai's Adam step, decoupled weight decay included."""
    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    theirs.load_state_dict(ours.state_dict())
    lazy = training.LazyAdam(list(ours.parameters()), lr=0.05, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.1)
    reference = fastai_adam(list(theirs.parameters()), 0.05, 0.9, 0.99, 1e-5, 0.1)
    x = torch.randn(8, 4)
    for _ in range(3):
        for model, optimizer in ((ours, lazy), (theirs, reference)):
            optimizer.zero_grad()
            (model(x) ** 2).mean().backward()
            optimizer.step()
    for mine, reference_parameter in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine.data, reference_parameter.data)


def test_the_defaults_where_they_were_tuned_are_the_tuned_settings():
    tuned = kinds.defaults_for(80_036, n_users=943, n_items=1_682)  # MovieLens 100k's card split
    assert {kind: tuned[kind] for kind in ("dot", "nn")} == {kind: kinds.KINDS[kind].base for kind in ("dot", "nn")}
    assert tuned["topn"] == dataclasses.replace(kinds.KINDS["topn"].base, bs=123)  # 4 sqrt(943) users a batch
    assert all(settings.epochs == 0 for settings in tuned.values())  # every model's epochs chosen by the data


def test_the_defaults_follow_the_data_without_a_step_at_any_size():
    """1% more data never moves a batch, learning rate or penalty by more than about 1%; a rating model's decay an
    epoch (lr x wd x steps) stays the tuned one, and the top-N model's penalty per user too."""
    sizes = [int(10_000 * 1.01 ** k) for k in range(0, 1200, 7)]  # 10,000 to 1.5 billion ratings, 7% apart
    for small, large in zip(sizes, sizes[1:]):
        before, after = kinds.defaults_for(small, small // 100), kinds.defaults_for(large, large // 100)
        for kind in before:
            for name in ("bs", "lr", "wd"):
                old, new = getattr(before[kind], name), getattr(after[kind], name)
                assert abs(new / old - 1) <= 0.08, (kind, name, small, old, new)
    for kind in ("dot", "nn"):
        per_epoch = {round(s.lr * s.wd * n / s.bs, 2) for n in sizes for s in [kinds.defaults_for(n)[kind]]}
        assert len(per_epoch) <= 3, (kind, per_epoch)  # the same decay an epoch, to rounding
    assert all(abs(kinds.defaults_for(n, n // 100)["topn"].wd / (n // 100) / (10 / 943) - 1) < 0.005 for n in sizes)


def test_the_nn_starts_from_the_dot_models_factors(synthetic_dataset):
    """The refit's embeddings start as the dot model of the same run (a step of lr 1e-9 leaves them there); asked
    for alone, the nn fits its own dot model first (the settings' entry for it) and returns only itself."""
    from hfcf import pipeline, vocab

    split = pipeline.make_split(synthetic_dataset, "random", 0.2, 0)
    users, items = vocab.from_ratings(split.train, split.valid)
    dot = dataclasses.replace(kinds.KINDS["dot"].base, epochs=2, bs=256, n_factors=8)
    nn = dataclasses.replace(kinds.KINDS["nn"].base, epochs=1, bs=256, lr=1e-9, user_size=8, item_size=8)
    both = training.fit(["dot", "nn"], {"dot": dot, "nn": nn}, split.train, split.valid, users, items, (0.5, 5.5),
                        0, log=lambda *_: None)
    for side in ("user", "item"):
        started = both["dot"].state_dict[f"{side}_factors.weight"]
        fitted = both["nn"].state_dict[f"{side}_embedding.weight"]
        assert torch.allclose(started, fitted, atol=1e-5) and started.abs().max() > 0.01
    alone = training.fit(["nn"], {"dot": dot, "nn": nn}, split.train, split.valid, users, items, (0.5, 5.5), 0,
                         log=lambda *_: None)
    assert list(alone) == ["nn"]
    assert torch.equal(alone["nn"].state_dict["user_embedding.weight"], both["nn"].state_dict["user_embedding.weight"])
    cold = dataclasses.replace(nn, warm_start=False, lr=1e-2)
    assert kinds.KINDS["nn"].starts_from(cold) is None and kinds.KINDS["nn"].starts_from(nn) == "dot"
    with pytest.raises(DataError, match="user_size and item_size must equal dot's n_factors \\(8\\)"):
        training.fit(["nn"], {"dot": dot, "nn": dataclasses.replace(nn, user_size=5)}, split.train, split.valid,
                     users, items, (0.5, 5.5), 0, log=lambda *_: None)


def test_the_search_of_a_warm_started_kind_starts_from_its_source_refitted_on_the_search_share(synthetic_dataset,
                                                                                             monkeypatch):
    """The epochs are chosen from a dot model fitted on the search's 90%, never on the ratings held out from it."""
    from hfcf import pipeline, vocab

    split = pipeline.make_split(synthetic_dataset, "random", 0.2, 0)
    users, items = vocab.from_ratings(split.train, split.valid)
    dot = dataclasses.replace(kinds.KINDS["dot"].base, epochs=2, bs=256, n_factors=8)
    nn = dataclasses.replace(kinds.KINDS["nn"].base, bs=256, user_size=8, item_size=8, max_epochs=3)
    seen = []
    original = training._refit
    monkeypatch.setattr(training, "_refit", lambda start, train, *rest: seen.append(len(train[0])) or original(
        start, train, *rest))
    fitted = training.fit(["dot", "nn"], {"dot": dot, "nn": nn}, split.train, split.valid, users, items, (0.5, 5.5),
                          0, log=lambda *_: None)
    assert seen == [len(split.train) - int(training.INNER_SHARE * len(split.train))]
    assert fitted["nn"].settings["epochs_chosen"]["tried"] and 1 <= fitted["nn"].settings["epochs"] <= 3


def test_settings_are_refused_when_made():
    """Each kind's settings check themselves: a model that cannot train is refused before any work."""
    with pytest.raises(DataError, match="topn: history dropout must be at least 0 and below 1"):
        dataclasses.replace(kinds.KINDS["topn"].base, embed_p=1.0)
    with pytest.raises(DataError, match="nn: --bs must be at least 2"):
        dataclasses.replace(kinds.KINDS["nn"].base, bs=1, batchnorm=True)
    assert dataclasses.replace(kinds.KINDS["nn"].base, bs=1, batchnorm=False).bs == 1  # checked with all of it in
    with pytest.raises(DataError, match="dot: --epochs must be at least 1"):
        dataclasses.replace(kinds.KINDS["dot"].base, epochs=0, max_epochs=0)
    with pytest.raises(DataError, match="dot: --epochs must be at least 1"):
        dataclasses.replace(kinds.KINDS["dot"].base, epochs=-1)
    assert "lazy" not in kinds.KINDS["topn"].Settings.names()  # a setting only the rating models have


@pytest.mark.parametrize("batchnorm, lazy, dense_decayed", [(True, False, True), (False, False, False),
                                                             (True, True, True), (False, True, False)])
def test_the_nn_l2_falls_on_the_embeddings_without_batchnorm(synthetic_dataset, batchnorm, lazy, dense_decayed):
    """Without BatchNorm an L2 on the dense layers held the nn at the biases (BENCHMARKS.md, Scale); with it, fastai's
    weight decay falls on every layer as in the book, whether the Adam step is lazy or not."""
    import dataclasses

    from hfcf import pipeline, vocab

    split = pipeline.make_split(synthetic_dataset, "random", 0.2, 0)
    users, items = vocab.from_ratings(split.train, split.valid)
    settings = dataclasses.replace(kinds.KINDS["nn"].base, epochs=1, bs=256, batchnorm=batchnorm, lazy=lazy,
                                   embed_p=0.0)
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
    settings = kinds.KINDS["dot"].base
    learn = ScriptedLearner([1.0, 0.95, 0.9, 0.92, 0.5])
    epochs, figure, tried = training.choose_epochs(learn, recipe, settings, wd=0.0)
    assert learn.runs == [1, 1, 1, 2]  # 64 steps at 100 a batch: one epoch first, then half the epochs so far
    assert (epochs, figure) == (3, 0.9) and tried == [(1, 1.0), (2, 0.95), (3, 0.9), (5, 0.92)]


def test_choose_epochs_takes_at_least_its_first_steps_and_stops_at_max_epochs():
    settings = dataclasses.replace(kinds.KINDS["topn"].base, max_epochs=20)
    learn = ScriptedLearner([0.1, 0.2, 0.3, 0.4], steps=8)
    learn.recorder.metric_names = ["epoch", "train_loss", "valid_loss", "ndcg@100", "time"]
    epochs, figure, tried = training.choose_epochs(learn, kinds.KINDS["topn"], settings, wd=0.0)
    assert learn.runs == [8, 4, 6, 2]  # 8 epochs of 8 steps first; the last run stops at max_epochs
    assert (epochs, figure) == (20, 0.4)  # higher is better for NDCG


def test_a_diverged_search_chooses_nothing():
    learn = ScriptedLearner([float("nan")])
    epochs, _, _ = training.choose_epochs(learn, kinds.KINDS["dot"], kinds.KINDS["dot"].base, wd=0.0)
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
