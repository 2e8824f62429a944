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
"""Evaluate: `python run_eval.py` (checkpoints/final -> reports/eval_results.json) or `--baseline` (fresh head).

mean IoU, per-class IoU, pixel accuracy and mean accuracy from a confusion matrix; primary_metric: mean_iou.
"""

import task

if __name__ == "__main__":
    raise SystemExit(task.evaluate())
