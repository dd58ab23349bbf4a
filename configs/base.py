"""The one config schema: every field of every config, with its default.

Field names follow yang-song/score_sde and yang-song/score_flow, so their command lines
(``--config.training.likelihood_weighting=True`` ...) work unchanged. Dataset defaults
(``configs/default_<dataset>_configs.py``) and leaf configs (``configs/<sde>/*.py``) only
override fields defined here; ``validation`` rejects any other field as a typo.
The defaults below are the CIFAR-10 settings of the papers.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def _training() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            'sde': 'vpsde',  # a registered SDE: sde_lib.sde_names()
            'continuous': True,  # t ~ U(eps, 1); False: discrete SMLD / DDPM (num_scales)
            'n_iters': 1300001,
            'batch_size': 128,  # global batch over all devices and hosts
            'likelihood_weighting': False,  # λ(t) = g(t)² (ScoreFlow), else λ = σ(t)²
            'importance_weighting': False,  # t ~ p(t) ∝ g²/σ² (needs likelihood_weighting)
            # the density of importance-sampled t (sde_lib.IMPORTANCE_DENSITIES): 'log_snr'
            # (ScoreFlow: p ∝ g²/σ², uniform in log SNR) or 'log1p_snr' (i-DODE: uniform in
            # log(1 + SNR), p ∝ g²/σ² · α²/(α² + σ²); meant for model.parameterization
            # 'velocity', where it makes the loss weight of ‖v̂ − v‖² constant)
            'importance_density': 'log_snr',
            'reduce_mean': False,  # mean (True) or sum (False) over data dimensions
            'n_jitted_steps': 5,  # training steps per jitted call (lax.scan)
            'snapshot_freq': 50000,  # checkpoint number = step // snapshot_freq
            'snapshot_freq_for_preemption': 10000,
            'snapshot_sampling': True,  # draw samples at each snapshot
            'eval_freq': 100,  # eval-split loss every eval_freq steps
            'log_freq': 100,
            'eps': 1e-5,  # smallest training time t
            # score_flow's name: when set, the smallest time of training and evaluation
            # (training.eps and eval.eps, as its run_lib passes it to both)
            'smallest_time': placeholder(float),
            'objective': 'dsm',  # losses.OBJECTIVES: denoising or sliced score matching
            # the network's compute type in training, models.utils.PRECISIONS ('bfloat16':
            # mixed precision with float32 parameters, optimizer and loss; evaluation,
            # likelihoods and sampling stay float32)
            'precision': 'float32',
            # Lu et al. (ICML 2022), maximum likelihood for the probability-flow ODE: 1 =
            # first-order DSM (the objective above); 2 adds the second-order DSM terms (the
            # network's Jacobian against ∇²log p_t, Frobenius and trace); 3 also the
            # third-order term (∇ tr of the Jacobian). Continuous 'dsm' only; fine-tune a
            # run by resuming it with a higher n_iters and another order (losses.py)
            'score_matching_order': 1,
            'second_order_weight': 1.0,  # γ₂ of the second-order terms (order ≥ 2)
            'third_order_weight': 1.0,  # γ₃ of the third-order term (order 3)
            # written by --mode train, not set by hand: 'step <n>: <field> <old> -> <new>'
            # for each change of the objective's fields on a resume (fine-tuning)
            'objective_changes': (),
        }
    )


def _sampling() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            'method': 'pc',  # 'pc' | 'ode' | 'dpm_solver' | 'ddim' | 'heun' (SAMPLING_METHODS)
            'predictor': 'euler_maruyama',  # sampling.predictor_names()
            'corrector': 'none',  # sampling.corrector_names()
            'snr': 0.16,  # corrector signal-to-noise ratio
            'n_steps_each': 1,  # corrector steps per predictor step
            'noise_removal': True,  # final denoising step (Tweedie)
            'probability_flow': False,  # PC with the probability-flow ODE predictor
            'rtol': 1e-5,  # ODE sampler tolerances
            'atol': 1e-5,
            'ode_method': 'dopri5',  # ode_solver.solver_names()
            'ode_time': 't',  # integration variable, sde_lib.ODE_TIMES ('t': the original)
            'eps': 1e-3,  # smallest sampling time t
            'smallest_time': placeholder(float),  # score_flow's name: sets sampling.eps
            # fixed-step solvers of the probability-flow ODE (docs/sampling.md)
            # default DPM-Solver++2M at 15 NFE: the best measured on DIGITS at <= 15 NFE
            'steps': 15,  # NFE of dpm_solver and ddim; Heun steps of heun (2 NFE each)
            'order': 2,  # dpm_solver: 1 (= DDIM), 2 or 3 (sampling.DPM_ORDERS)
            'solver_type': 'multistep',  # dpm_solver: sampling.SOLVER_TYPES
            'algorithm': 'dpmsolver++',  # dpm_solver: ε̂ or x̂₀ form, sampling.DPM_ALGORITHMS
            'skip_type': 'logSNR',  # time steps of dpm_solver and ddim, sampling.SKIP_TYPES
            'eta': 0.0,  # ddim: η in [0, 1] (0: deterministic, 1: ancestral)
            'rho': 7.0,  # heun: EDM's ρ of the time steps σ̃_i (σ̃ = σ/α)
            'denoise_to_zero': False,  # fast solvers: one more NFE, x̂₀ = E[x_0 | x_eps]
            # --mode sample (controllable generation, Score SDE §5; docs/controllable.md)
            'task': 'unconditional',  # sample_runner.TASKS
            'num_samples': 64,  # samples (class_conditional: per class; else test images)
            'classes': (),  # class_conditional: class ids; () = every class of the data
            'classifier_scale': 1.0,  # ∇log p_t(x) + scale·∇log p_t(y|x); 1 = exact
            'mask': 'bottom_half',  # inpaint: sample_runner.MASKS, 'random_pixels:<p>', .npy
            'inpaint_resample': 1,  # RePaint rounds per step (inpaint, colorize); 1 = original
            # identifiability: a second model's work directory (its newest snapshot)
            'reference_workdir': '',
            # The method of guided tasks (class_conditional: a classifier's gradient is added
            # to the score), in place of `method`: the gradient makes the probability-flow ODE
            # stiff (DIGITS: > 15 min for 100 samples), PC finishes in minutes. The one place
            # that sets the default for guided sampling.
            'guided_method': 'pc',
        }
    )


def _eval() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            # Snapshots W/checkpoints/<n> to evaluate, begin_ckpt … end_ckpt inclusive
            # (CIFAR-10's values of the originals). end_ckpt -1: the newest one; begin_ckpt -1:
            # end_ckpt only. --mode sample and --mode train_deq use snapshot end_ckpt.
            'begin_ckpt': 26,
            'end_ckpt': 26,
            'batch_size': 1024,  # global evaluation batch
            'enable_loss': False,
            'enable_bpd': True,
            'bpd_dataset': 'test',  # 'train' | 'test'
            'num_repeats': 5,  # passes over the split (dequantization noise)
            'bound': False,  # ScoreFlow variational bound alongside the ODE
            'bound_importance_weighting': True,  # bound's t ~ p(t) ∝ g²/σ² (else U[ε, T])
            'dsm': True,  # bound in DSM form (else sliced score matching)
            'offset': True,  # ε-offset decoder term of the bound
            'dequantizer': False,  # variational (Flow++) instead of uniform deq.
            # the fixed dequantization q(u | x̄) when eval.dequantizer is False:
            # eval_quantities.DEQUANTIZATIONS ('uniform'; 'truncated_normal': i-DODE's
            # forward kernel of time eval.eps truncated to the bin, ODE bits/dim only)
            'dequantization': 'uniform',
            'enable_sampling': False,
            'num_samples': 50000,
            'inception_path': '',  # local Inception weights for FID/IS/KID
            'sample_metrics': True,  # FID/IS/KID of the samples (False: samples only)
            'stats_path': '',  # reference statistics .npz (the originals' pool_3 layout)
            'rtol': 1e-5,  # likelihood ODE tolerances
            'atol': 1e-5,
            'eps': 1e-5,  # smallest time of the likelihood ODE / bound
            'ode_method': 'dopri5',  # likelihood ODE solver, ode_solver.solver_names()
            'ode_time': 't',  # its integration variable, sde_lib.ODE_TIMES
            'hutchinson_type': 'Rademacher',  # likelihood.HUTCHINSON_TYPES ('exact': small D)
            'ckpt_timeout': 0.0,  # s to wait for a checkpoint not yet written (0: fail)
            # score_flow: the snapshot --mode train_deq trains against (unset: end_ckpt)
            'ckpt_id': placeholder(int),
        }
    )


def _data() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            'dataset': 'CIFAR10',  # datasets.dataset_names(): TFDS, TFRecords, DIGITS, NPZ…
            'image_size': 32,
            'num_channels': 3,
            'centered': False,  # scale [0, 1] data to [-1, 1]
            'random_flip': True,  # random horizontal flips in training
            'uniform_dequantization': False,  # train on (x̄ + u) / K instead of x̄ / (K − 1)
            'num_bins': 256,  # levels K of discrete data
            'path': '',  # NPZ file with 'train' and 'test' arrays
            'data_dir': '',  # TFDS data directory; '' = TFDS default
            'download': False,  # let TFDS download and prepare missing data
            'dim': 2,  # dimension D of vector data (TOY, NPZ vectors)
            'category': '',  # LSUN: a TFDS lsun scene category, datasets.LSUN_CATEGORIES
            # CelebAHQ / FFHQ: their TFRecords file (path or glob, local or gs://)
            'tfrecords_path': '',
        }
    )


def _model() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            'name': 'ncsnpp',  # a registered model: models.utils.registered_models()
            'sigma_min': 0.01,
            'sigma_max': 50.0,
            'num_scales': 1000,
            'beta_min': 0.1,
            'beta_max': 20.0,
            'dropout': 0.1,
            'embedding_type': 'fourier',  # 'fourier' | 'positional'
            'fourier_scale': 16.0,
            'trainable_embedding': False,  # train the Fourier features W (score_flow)
            'nf': 128,
            'ch_mult': (1, 2, 2, 2),
            'num_res_blocks': 4,
            'attn_resolutions': (16,),
            'resamp_with_conv': True,
            'conditional': True,
            'fir': False,
            'fir_kernel': [1, 3, 3, 1],
            'skip_rescale': True,
            'resblock_type': 'biggan',  # 'ddpm' | 'biggan'
            'progressive': 'none',  # 'none' | 'output_skip' | 'residual'
            'progressive_input': 'none',  # 'none' | 'input_skip' | 'residual'
            'progressive_combine': 'sum',  # 'sum' | 'cat'
            'attention_type': 'ddpm',
            'init_scale': 0.0,
            'scale_by_sigma': False,
            # what the network outputs (sde_lib.PARAMETERIZATIONS): 'score' = each SDE's
            # convention of the papers (VP: the noise, score = −output/σ); 'velocity' =
            # i-DODE's v = (α ε − σ x_0)/√(α² + σ²) (sde_lib.SDE.velocity_coefficients);
            # continuous training only, without scale_by_sigma; fixed for a run's life
            'parameterization': 'score',
            'normalization': 'GroupNorm',
            'nonlinearity': 'swish',
            'conv_size': 3,
            'interpolation': 'bilinear',  # NCSNv2 upsampling: 'bilinear' | 'nearest_neighbor'
            'ema_rate': 0.9999,
            'data_init': False,  # score_flow's; read nowhere there, True is refused here
        }
    )


def _optim() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            'optimizer': 'Adam',
            'lr': 2e-4,
            'beta1': 0.9,
            'beta2': 0.999,
            'eps': 1e-8,
            'weight_decay': 0.0,
            'warmup': 5000,  # linear learning-rate warm-up steps
            'grad_clip': 1.0,  # global-norm clipping; negative disables
            'amsgrad': False,  # Score SDE's CelebA-HQ / FFHQ files; True is refused
        }
    )


def _deq() -> ml_collections.ConfigDict:
    """Variational dequantizer q(u | x̄) trained by ``--mode train_deq`` (score_flow's
    ``deq.*``; the architecture fields are ours: score_flow fixes them per dataset)."""
    return ml_collections.ConfigDict(
        {
            'n_iters': 300001,
            'ema_rate': 0.99,
            'dropout': 0.0,  # Flow++ dropout in training (score_flow ignores this field)
            'offset': True,
            'name': 'flowpp',  # models.utils.registered_dequantizers()
            'layout': 'cifar10',  # models.flowpp.LAYOUTS: score_flow's CIFAR-10 / ImageNet 32
            'filters': 96,
            'components': 32,  # logistics in each coupling's mixture CDF
            'blocks': 2,
            'attn_heads': 4,
        }
    )


def _classifier() -> ml_collections.ConfigDict:
    """Noise-conditional classifier p_t(y | x) of class-conditional sampling, trained by
    ``--mode train_classifier`` on x(t) ~ p_0t(· | x) (its optimizer: ``config.optim``'s
    betas, eps, grad_clip and weight decay with the lr / warmup below)."""
    return ml_collections.ConfigDict(
        {
            'name': 'wideresnet_noise_conditional',  # models.utils.registered_classifiers()
            'blocks_per_group': 4,  # Wide-ResNet (Score SDE's CIFAR-10 classifier: 4, 10)
            'channel_multiplier': 10,
            'embedding_type': 'fourier',  # embedding of log σ(t): 'fourier' | 'positional'
            'fourier_scale': 16.0,
            'nf': 256,  # 'mlp' (vector data): width and number of hidden layers
            'num_layers': 3,
            'n_iters': 100000,
            'batch_size': 128,
            'lr': 2e-4,
            'warmup': 1000,
            'ema_rate': 0.999,
            'snapshot_freq': 10000,  # W/<classifier_folder>/checkpoints, step // snapshot_freq
            'eval_freq': 1000,  # test accuracy, clean and noisy
        }
    )


def get_base_config() -> ml_collections.ConfigDict:
    """A fresh config holding every field with its default (CIFAR-10 settings)."""
    config = ml_collections.ConfigDict()
    config.training = _training()
    config.sampling = _sampling()
    config.eval = _eval()
    config.data = _data()
    config.model = _model()
    config.optim = _optim()
    config.deq = _deq()
    config.classifier = _classifier()
    config.seed = 42
    return config
