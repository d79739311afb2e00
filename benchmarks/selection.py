"""Choosing λ for one method at one learning rate: by a hold-out split over
seeds, or by k-fold cross-validation, then one run on the whole training
split at the chosen λ for its test accuracy.

Hold-out (`folds` ≤ 1): each λ trains once per seed, each seed holding out
its own `validation_fraction`; the mean validation accuracy over seeds
picks λ. k-fold (`folds` = k ≥ 2): each λ trains k times at the first seed,
fold i of k disjoint folds of the training split validating the i-th run
(`data.split_fold`); the mean over folds picks λ. The report puts the
spread over folds beside the spread over seeds.
"""

import math

import numpy as np


def mean_std(values) -> tuple:
  """(mean, sample std with ddof 1; nan for one value) of finite values."""
  values = [v for v in values if math.isfinite(v)]
  if not values:
    return math.nan, math.nan
  return (float(np.mean(values)),
          float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)


def spreads(rows: list, key: str = 'val_accuracy') -> dict:
  """{λ: (mean, std) of `key` over the rows of that λ}; a λ with a cell
  that did not finish gets nan, so it is never chosen."""
  result = {}
  for weight in sorted({r['l2_weight'] for r in rows}):
    values = [r[key] for r in rows if r['l2_weight'] == weight]
    result[weight] = (mean_std(values) if all(map(math.isfinite, values))
                      else (math.nan, math.nan))
  return result


def choose(stats: dict) -> float:
  """The λ of highest mean; ties to the smaller λ."""
  score = lambda w: np.nan_to_num(stats[w][0], nan=-np.inf)
  return max(sorted(stats), key=score)


def cells(make_cell, weights, seeds, folds: int) -> dict:
  """{'holdout': cells over seeds, 'folds': cells over folds (k ≥ 2)}.

  `make_cell(weight, seed, overrides, suffix)` builds one cell."""
  result = {'holdout': [make_cell(w, s, {}, '') for w in weights
                        for s in seeds]}
  if folds >= 2:
    result['folds'] = [
        make_cell(w, seeds[0], {'folds': folds, 'fold': i},
                  f'_fold{i}of{folds}') for w in weights for i in range(folds)]
  return result


def final_cell(make_cell, weight, seed):
  """The chosen λ on the whole training split (no validation)."""
  return make_cell(weight, seed, {'validation_fraction': 0.0, 'folds': 0},
                   '_all')


def report(method: str, lr: float, holdout: list, fold_rows: list,
           folds: int, final: dict, header: list) -> str:
  """select_METHOD.md from the rows of the three kinds of cells."""
  by_seed = spreads(holdout)
  by_fold = spreads(fold_rows) if fold_rows else {}
  test = spreads(holdout, 'test_accuracy')
  chosen = choose(by_fold if by_fold else by_seed)
  pct = lambda m, s: (f'{100 * m:.2f} ± {100 * s:.2f}' if math.isfinite(s)
                      else f'{100 * m:.2f}')
  lines = [f'# λ for {method} at lr {lr:g}', '', *header, '',
           'Accuracy in %, mean ± std (ddof 1). Chosen by the mean '
           'validation accuracy over '
           + (f'{folds} folds (k-fold cross-validation at seed '
              f'{fold_rows[0]["seed"]})' if by_fold else 'seeds (hold-out)')
           + '. A seed sets the initialization, the data order and the '
           'held-out images; a fold sets only which images validate.', '',
           '| λ | val over seeds | val over folds | test over seeds |',
           '|---|---|---|---|']
  for weight, (mean, std) in by_seed.items():
    mark = ' (chosen)' if weight == chosen else ''
    fold = pct(*by_fold[weight]) if weight in by_fold else '–'
    lines.append(f'| {weight:g}{mark} | {pct(mean, std)} | {fold} | '
                 f'{pct(*test[weight])} |')
  lines += ['', f'Chosen λ = {chosen:g}: trained on the whole training split '
            f'(seed {final["seed"]}), test accuracy '
            f'{100 * final["test_accuracy"]:.2f} %.' if final else
            f'Chosen λ = {chosen:g}; its run on the whole training split did '
            'not finish.']
  return '\n'.join(lines) + '\n'
