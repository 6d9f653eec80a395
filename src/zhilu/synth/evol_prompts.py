"""The evolution prompts: written for this project, in Chinese, for four kinds of instructions.

The scheme is Evol-Instruct's (Xu et al. 2023, "WizardLM: Empowering Large Language Models to
Follow Complex Instructions", https://arxiv.org/abs/2304.12244): in-depth evolution (add
constraints, deepen, concretise, increase reasoning steps, complicate the input) and in-breadth
evolution (a new instruction in the same domain). Each operation has a general directive and,
where it helps, a directive for a domain: Chinese consumer finance, code or math
(WizardCoder, https://arxiv.org/abs/2306.08568, and WizardMath, https://arxiv.org/abs/2308.09583,
adapted the operations to code and math in the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DOMAINS = ("finance", "general", "code", "math")

DOMAIN_NAMES = {"finance": "中国消费金融", "general": "通用", "code": "编程", "math": "数学"}

DOMAIN_GUIDES = {
    "finance": "这是一条中国消费金融领域的指令（信用卡、消费贷款、征信、储蓄理财、保险、反诈等）。"
               "改写后的指令要符合中国的金融常识和监管规定，涉及的金额、利率、期限要真实合理。",
    "general": "这是一条通用领域的指令。",
    "code": "这是一条编程相关的指令。改写后若包含代码，代码必须语法正确，且使用与原指令相同的编程语言。",
    "math": "这是一道数学题。改写后的题目必须条件自洽，有确定且可以求出的答案。",
}

# Markers of the prompt itself: an evolved instruction that contains one has copied the prompt.
PROMPT_MARKERS = ("#给定指令#", "#改写后的指令#", "#新指令#", "给定指令", "改写后的指令", "指令改写者", "指令创作者",
                  "改写方法", "Given Prompt", "Rewritten Prompt", "Created Prompt")

DEPTH_TEMPLATE = """我希望你充当一名指令改写者。
你的目标是把给定指令改写得更复杂一些，让 ChatGPT、GPT-4 这样的知名 AI 系统更难处理。
但改写后的指令必须合理，能被人理解，也能被人回答。
给定指令中的非文字部分（表格、代码、公式、数据等）不能省略。
{domain_guide}
请用下面的方法改写：
{directive}
改写后的指令应尽量简洁，只比给定指令多 10 到 40 个字（英文指令为 10 到 30 个词）。
“给定指令”“改写后的指令”这些字样不能出现在改写后的指令中。
只输出改写后的指令本身，不要回答它。

#给定指令#：
{instruction}

#改写后的指令#："""

BREADTH_TEMPLATE = """我希望你充当一名指令创作者。
你的目标是以给定指令为灵感，创作一条全新的指令。
新指令必须与给定指令属于同一领域（{domain_name}），但话题更少见、更有长尾性。
{directive}
新指令的长度和难度应与给定指令相近，必须合理，能被人理解，也能被人回答。
{domain_guide}
“给定指令”“新指令”这些字样不能出现在新指令中。
只输出新指令本身，不要回答它。

#给定指令#：
{instruction}

#新指令#："""


@dataclass(frozen=True)
class EvolOperation:
    """One evolution operation: its template and directives (general, and per domain)."""

    name: str
    kind: str  # depth | breadth
    directive: str
    domain_directives: dict[str, str] = field(default_factory=dict)

    def directive_for(self, domain: str) -> str:
        return self.domain_directives.get(domain, self.directive)

    def prompt(self, instruction: str, domain: str) -> str:
        template = DEPTH_TEMPLATE if self.kind == "depth" else BREADTH_TEMPLATE
        return template.format(instruction=instruction.strip(), directive=self.directive_for(domain),
                               domain_guide=DOMAIN_GUIDES[domain], domain_name=DOMAIN_NAMES[domain])


OPERATIONS: dict[str, EvolOperation] = {op.name: op for op in [
    EvolOperation(
        "add_constraints", "depth",
        "为指令再增加一条约束或要求。",
        {"finance": "为指令再增加一条约束或要求，例如限定借款人的收入或负债、贷款期限或还款方式，"
                    "要求用年化利率（APR）比较，或要求指出相关的监管规定与风险提示。",
         "code": "为指令再增加一条约束或要求，例如限定时间或空间复杂度、禁止使用某个库函数，或要求处理特定的边界情况。",
         "math": "为题目再增加一个条件或约束，使解题需要多考虑一种情况。"}),
    EvolOperation(
        "deepen", "depth",
        "如果给定指令涉及某些问题，就增加对这些问题追问的深度和广度。",
        {"finance": "增加追问的深度和广度，例如从单一产品扩展到比较几种信贷或理财产品，"
                    "或追问其背后的定价方式、监管原因和对个人征信的影响。",
         "code": "增加问题的深度和广度，例如要求解释实现背后的原理，或比较两种实现方案的取舍。"}),
    EvolOperation(
        "concretize", "depth",
        "把笼统的概念换成更具体的概念。",
        {"finance": "把笼统的概念换成更具体的概念，例如把“贷款”具体化为“等额本息、分 36 期偿还的 10 万元消费贷款”，"
                    "把“某人”具体化为有明确月收入和负债的借款人。",
         "code": "把笼统的概念换成更具体的概念，例如给出具体的输入输出格式、数据规模或运行环境。",
         "math": "把笼统的条件换成具体的数值或具体的对象。"}),
    EvolOperation(
        "increase_reasoning", "depth",
        "如果给定指令只需几步简单的思考就能解决，就把它改写成明确要求多步推理。",
        {"finance": "把指令改写成明确要求多步推理，例如要求分步计算月供、总利息和实际年化利率，再比较两种方案并给出建议。",
         "code": "把指令改写成明确要求多步推理，例如要求先分析思路和复杂度，再给出实现，最后说明如何测试。",
         "math": "把题目改写成需要多步推理才能解出，并要求写出每一步的推导。"}),
    EvolOperation(
        "complicate_input", "depth",
        "在指令中加入一段需要处理的输入数据（如表格、列表或 JSON），使指令更复杂。",
        {"finance": "在指令中加入一段需要处理的输入数据，例如一张信用卡账单或还款计划表（Markdown 表格）、"
                    "一段贷款合同条款，或一组交易记录。",
         "code": "在指令中加入一段需要处理的代码（例如一段有缺陷、需要修复或优化的代码），或一组测试输入。",
         "math": "在题目中加入一组数据或一张表格，要求基于它们求解。"}),
    EvolOperation(
        "breadth", "breadth",
        "新指令讨论的具体对象或场景要与给定指令不同。",
        {"finance": "新指令讨论的具体产品、人群或场景要与给定指令不同，例如换成另一种信贷产品、另一类消费者或另一种诈骗手法。"}),
]}
