# SPDX-FileCopyrightText: Copyright (c) 2026 NVIDIA CORPORATION & AFFILIATES. All rights reserved.
# SPDX-License-Identifier: Apache-2.0
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
# http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Fine-tune: `python train.py [--smoke] [--max_steps N]`; multi-GPU: `torchrun --nproc_per_node=N train.py`.

Plain PyTorch loop (common.train) over the uint8 tensors cached by prepare_data.py: bf16 autocast, TF32, fused AdamW,
SDPA where the architecture has it, resumable checkpoints in checkpoints/step-N, checkpoints/final, logs/metrics.jsonl.
"""

import task
from common import train

if __name__ == "__main__":
    raise SystemExit(train(task))
