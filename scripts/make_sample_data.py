#!/usr/bin/env python3
"""Build zhilu's own sample data sets (pure standard library, deterministic).

Every question, answer, preference pair and knowledge passage in this file was
written for the zhilu project; the data it produces is released under the same
license as the project (Apache-2.0).  Arithmetic answers (monthly payments,
interest, fees, APR) are computed in Python below, so each number shown is
exact up to the stated rounding.

Outputs (relative to ``--out``, default ``<repo>/data``)::

    finance_sft/train.jsonl, finance_sft/val.jsonl   chat-format SFT dialogues
    finance_dpo/train.jsonl, finance_dpo/val.jsonl   preference pairs
    knowledge/*.md                                   passages for BM25 retrieval
    README.md                                        description and counts

Usage (from the repo root)::

    python scripts/make_sample_data.py            # rewrites data/
    python scripts/make_sample_data.py --out DIR  # writes somewhere else

Running it twice produces byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections import OrderedDict
from pathlib import Path

SEED = 20240611
SFT_VAL_FRACTION = 0.10
DPO_VAL_FRACTION = 0.12
REPO_ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------
# System prompts and small helpers
# ---------------------------------------------------------------------------

SYSTEM_PROMPTS_ZH = [
    "You are a helpful assistant. 你是一个乐于助人的助手。",
    "你是“智鹿”消费金融助手，熟悉信用卡、消费贷款、征信和反诈知识。请用准确、审慎、易懂的中文回答；涉及计算时给出公式和步骤；不承诺任何投资收益。",
    "你是一家持牌金融机构的智能客服。回答要合规、客观，提醒用户以合同和官方渠道信息为准，不要索取用户的密码、验证码等敏感信息。",
    "你是一个专业、耐心的理财与信贷知识助手。",
]
SYSTEM_PROMPTS_EN = [
    "You are a helpful assistant. 你是一个乐于助人的助手。",
    "You are ZhiLu, a careful consumer-finance assistant. Answer in the user's language, explain calculations step by step, and never promise investment returns.",
]

# Short closing exchanges used to turn some single-turn dialogues into
# multi-turn ones (real chat logs often end like this).
CLOSERS_ZH = [
    ("明白了，谢谢！", "不客气！如果之后还有信用卡、贷款或征信方面的问题，随时可以问我。"),
    ("好的，我再去看看合同。", "好的。看合同时重点留意利率（最好是年化利率）、各项费用、还款方式和违约条款，有不清楚的地方可以直接向机构的官方客服确认。"),
    ("谢谢，讲得很清楚。", "很高兴能帮到你。涉及具体金额和规则时，请以你所在机构的合同和官方公告为准。"),
    ("懂了，感谢。", "不客气，祝你用卡、借贷都顺顺利利。"),
    ("那我去银行APP上再确认一下。", "好的，通过官方APP或官方客服热线确认最稳妥。注意不要点击短信里的陌生链接，也不要把验证码告诉任何人。"),
    ("嗯，我知道该怎么做了。", "好的！如果过程中遇到新的情况，可以把具体信息（注意隐去身份证号、卡号等敏感信息）发给我，我帮你一起分析。"),
    ("太好了，谢谢你的耐心解答。", "不用谢。理财和借贷都建议量力而行，遇到拿不准的情况多咨询、多核实。"),
]
CLOSERS_EN = [
    ("Got it, thanks!", "You're welcome! Feel free to ask if you have more questions about credit cards, loans or credit reports."),
    ("Thanks, that's very clear.", "Glad it helped. For exact figures and rules, always check your own contract and the institution's official channels."),
    ("OK, I'll check my contract.", "Good idea. Look for the annualized rate (APR), all fees, the repayment method and the penalty clauses, and ask the lender's official customer service if anything is unclear."),
]


def money(x: float) -> str:
    """Format an amount of yuan with two decimals (no thousands separator)."""
    return f"{x:.2f}"


def pct(x: float) -> str:
    """Format a percentage number without trailing zeros: 4.35 -> '4.35'."""
    return f"{x:g}"


def wan(p: int) -> str:
    """Human-friendly amount: 100000 -> '10万元', 15000 -> '15000元'."""
    if p % 10000 == 0:
        return f"{p // 10000}万元"
    return f"{p}元"


def has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def annuity_payment(principal: float, annual_pct: float, months: int) -> float:
    """Equal-installment (等额本息) monthly payment."""
    r = annual_pct / 100 / 12
    if r == 0:
        return principal / months
    g = (1 + r) ** months
    return principal * r * g / (g - 1)


def remaining_balance(principal: float, annual_pct: float, months: int, paid: int) -> float:
    """Outstanding principal of an equal-installment loan after ``paid`` payments."""
    r = annual_pct / 100 / 12
    m = annuity_payment(principal, annual_pct, months)
    g = (1 + r) ** paid
    return principal * g - m * (g - 1) / r


def monthly_irr(principal: float, payment: float, months: int) -> float:
    """Monthly internal rate of return of receiving ``principal`` and paying
    ``payment`` for ``months`` months (bisection, pure Python)."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        pv = payment * (1 - (1 + mid) ** -months) / mid if mid > 0 else payment * months
        if pv > principal:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2

# ---------------------------------------------------------------------------
# Hand-written SFT banks.  Each entry: (question, answer) or
# (question, answer, [(follow-up question, follow-up answer), ...]).
# ---------------------------------------------------------------------------

CREDIT_CARD = [
    ("信用卡的账单日和还款日有什么区别？",
     "账单日是银行每月把上一个周期的交易汇总、出具账单的日子；到期还款日是你最晚需要还清本期账单（或至少还够最低还款额）的日子，一般在账单日之后约20天左右，具体以发卡行为准。账单日之后发生的消费会计入下一期账单。只要在到期还款日前全额还款，消费部分就可以享受免息。",
     [("那我在账单日后一天刷卡，免息期是不是最长？",
       "一般是这样。账单日后一天的消费要等到下一个账单日才出账，再加上账单日到还款日之间的天数，免息期接近最长，很多银行宣传的“最长50天”或“最长56天”就是这么算出来的。不过要注意，免息只适用于按时全额还款的消费，取现通常不享受免息期。")]),
    ("信用卡的免息还款期是什么？最长有多少天？",
     "免息还款期是指从银行记账日到到期还款日之间的这段时间，只要在到期还款日前全额还清，消费款项就不收利息。国内多数银行的免息期大约在20天到56天之间，常见宣传为“最长50天”或“最长56天”，实际能享受多少天取决于你的消费日期离账单日有多远。需要注意，取现一般从取现当天起计息，不享受免息期。"),
    ("只还信用卡最低还款额会有什么后果？",
     "最低还款额通常是本期账单消费金额的10%左右，再加上之前未还的最低还款额、费用和利息等，各行算法略有差异。按最低还款额还款不算逾期，不会因此产生逾期记录，但剩余未还部分不再享受免息，要按日计收利息，很多银行的透支日利率是万分之五，折合年化约18.25%。长期只还最低还款额会让利息越滚越多，建议尽量全额还款。",
     [("那如果连最低还款额都没还够呢？",
       "没有足额偿还最低还款额就属于逾期。除了透支利息，银行还可能按领用合约收取违约金（不少银行是最低还款额未还部分的5%，以各行规定为准），逾期信息也会报送到人民银行征信系统。建议尽快补足欠款，并主动联系发卡行说明情况；如果确实遇到困难，可以通过官方渠道申请分期或协商还款方案。")]),
    ("信用卡循环利息是怎么算的？",
     "当你没有在到期还款日前全额还款时，未还部分会产生循环利息，一般按日计息、按月计收复利，很多银行的日利率为万分之五。不同银行的计息范围不一样：有的只对未还部分计息，有的则对整期账单金额从每笔交易的记账日起计息，后一种情况利息会明显更高。具体规则请以你的信用卡领用合约为准，拿不准可以致电发卡行确认。"),
    ("信用卡取现要收手续费吗？利息怎么算？",
     "通常要收。信用卡预借现金（取现）一般会收取手续费，常见标准是取现金额的1%左右、每笔有最低收费，具体以发卡行公布的标准为准。取现不享受免息期，从取现当天起按日计息，常见日利率为万分之五。因此信用卡取现成本较高，只适合短期应急，不建议用于长期周转。",
     [("那取出来的钱能拿去买理财或者炒股吗？",
       "不建议，也不合规。按照信用卡业务的相关规定，信用卡资金应用于消费，不得用于购房、投资理财、炒股等领域。一旦被银行发现，可能被降额、止付甚至要求提前还款；而投资本身有亏损风险，亏了还要承担透支利息，风险是叠加的。")]),
    ("信用卡年费怎么才能免掉？",
     "很多普卡和部分金卡有“刷卡免年费”的政策，比如一年内消费满一定次数（常见是6次）或满一定金额，就可以免收次年年费；白金卡等高端卡往往有较高的刚性年费，或者需要用积分抵扣。办卡前最好问清年费规则。对于长期不用的卡，可以在还清欠款后主动注销，避免因为年费没还而产生逾期。"),
    ("不用的信用卡要不要注销？注销会影响征信吗？",
     "如果确定不再使用，可以注销。注销前先还清所有欠款和年费，确认没有溢缴款、分期余额或绑定的自动扣款，再通过官方渠道申请；部分银行在你申请后还有一段观察期才真正销户。注销不会删除已有的征信记录，过去良好的还款记录仍会保留，一般对信用影响不大。反倒是长期闲置不注销，可能因年费未缴而出现逾期。"),
    ("信用卡分期的手续费看起来很低，真的便宜吗？",
     "不一定。信用卡分期通常按月收取手续费，比如每月0.6%，看上去一年只有7.2%；但你每个月都在归还本金，实际占用的资金越来越少，而手续费仍按最初的分期金额计算，所以真实年化利率大约是名义费率的1.8到1.9倍。以12期、每月0.6%为例，按内部收益率法折算的年化利率约为13%。按照监管要求，机构在营销贷款和分期产品时应当明示年化利率，办理前可以要求银行告知。"),
    ("信用卡晚还一天会不会算逾期？",
     "要看发卡行有没有“还款宽限期”服务。不少银行会给到期还款日后的几天（常见为3天）作为宽限期，在宽限期内还款仍视为按时还款，但这是银行自主提供的服务，有没有、有几天各行不同，需要提前确认。超过宽限期还没还，就构成逾期，可能产生利息和违约金，并上报征信。万一逾期了，应尽快还清并联系银行说明原因。"),
    ("信用卡里多还进去的钱是什么？能取出来吗？",
     "多还进去的那部分叫“溢缴款”，比如欠款1000元你还了1500元，多出的500元就是溢缴款。溢缴款可以用于后续消费自动抵扣，也可以申请取回，但部分银行取回溢缴款会收手续费，尤其是通过ATM或跨行转出时。溢缴款通常不计利息，所以没有必要往信用卡里存钱。"),
    ("怎样才能提高信用卡额度？",
     "银行一般会综合用卡时长、消费频率、还款记录、收入和负债情况来评估是否提额。比较有效的做法是：按时全额还款，正常、多样化地消费，不要长期刷爆额度，避免频繁取现或在可疑商户交易。用卡满一段时间后，可以通过官方APP或客服申请调额。对于声称“内部渠道、包提额”的收费服务要格外警惕，这类大多是诈骗。"),
    ("用POS机把信用卡额度刷出来用，有风险吗？",
     "有很大风险。通过虚构交易把信用卡额度变成现金属于违规套现，银行风控一旦识别，可能降额、封卡，并影响你的信用记录；情节严重、以此牟利的组织者还可能触犯刑法。此外，来路不明的POS机还存在盗刷和信息泄露风险。确实需要资金周转，应选择正规的贷款产品，比较年化利率后理性借款。"),
    ("账单分期和消费分期有什么不同？",
     "消费分期是针对某一笔具体消费申请分期，一般要在这笔交易入账后、出账前后的规定时间内办理；账单分期则是对已经出账的整期账单（或其中一部分）申请分期。两者通常都按期收取手续费或利息，分期本金会占用额度，随每期还款逐步恢复。提前结清时，有的银行仍会收取剩余手续费或违约金，办理前最好问清楚。"),
    ("信用卡积分有什么用？",
     "积分一般可以兑换礼品、航空里程、抵扣年费或在合作商户抵现，具体规则和有效期由发卡行决定。取现、还款、分期手续费以及部分类别的交易通常不累积积分。另外要注意，“积分即将清零，点击链接兑换”的短信很多是钓鱼诈骗，查询和兑换积分请只用银行官方APP。"),
    ("信用卡的附属卡是什么？要谁来还钱？",
     "附属卡是主卡持卡人为家人等申请的卡，通常共享主卡额度，主卡人也可以给附属卡单独设置消费上限。附属卡的消费会出现在主卡账单里，还款责任由主卡持卡人承担。所以办理附属卡前要确认对方用卡习惯良好，并定期查看账单。"),
    ("我的信用卡被盗刷了，应该怎么办？",
     "先第一时间通过银行官方APP或客服电话冻结或挂失卡片，防止继续损失。然后尽快在就近的ATM或柜台用这张卡做一笔查询或交易，留存“卡在本人手中”的证据。接着向公安机关报案，并向发卡行提交争议交易申请，保存好交易短信、账单和报案回执。之后按银行流程跟进调查结果。平时不要把卡号、有效期、卡背面安全码和短信验证码告诉任何人。",
     [("银行会把被盗刷的钱赔给我吗？",
       "要看调查结果和责任认定。如果能证明是伪卡盗刷或网络盗刷、且你本人没有泄露密码和验证码等过错，银行通常会按规定处理，可能退回款项或承担相应责任；如果是你自己把验证码告诉了骗子，责任认定会对你不利。所以及时挂失、及时报案、保留证据非常关键。")]),
    ("只还最低还款额和做账单分期，哪个更划算？",
     "一般来说账单分期的总成本低于长期只还最低还款额。只还最低时，未还部分常按日息万分之五计息，年化约18.25%，而且部分银行按全部账单金额计息；账单分期的真实年化利率常见在10%到18%之间，取决于费率和期数。建议把两者都换算成年化利率再比较，同时结合自己未来几个月的现金流。能一次还清的话，当然最省钱。"),
    ("可以用信用卡还房贷吗？",
     "不可以。信用卡透支资金不得用于偿还贷款、购房或投资，用信用卡套现还房贷属于违规用卡，可能被降额封卡，还容易陷入“以卡养贷”的循环，利息越滚越多。如果房贷还款确实有困难，建议尽早联系贷款银行，咨询能否调整还款计划。"),
    ("信用卡临时额度有什么要注意的？",
     "临时额度是银行在固定额度之外临时提供的额度，有有效期，常见为一到三个月，到期自动失效。很多银行要求临时额度部分在当期账单中全额还清，不能只还最低还款额，也不一定能办分期。使用前要看清规则，别在到期时因为还款不足而产生利息或影响征信。"),
    ("信用卡差几块钱没还清，会不会算逾期？",
     "部分银行提供“容差还款”服务：如果全额还款后只剩很小一笔没还（标准各行不同，例如10元以内），会视同已全额还款，不收循环利息，也不算逾期。但这是银行自愿提供的服务，并非所有卡都有，不要依赖它。最稳妥的做法是按账单金额足额还款，或者设置自动全额还款。"),
    ("怎么设置信用卡自动还款？",
     "一般可以在发卡行的官方APP、网银或柜台绑定本人借记卡，选择“全额还款”或“最低还款”。设置好以后，要保证扣款日前借记卡余额充足，否则扣款失败仍可能逾期。跨行绑定的自动还款有时存在到账时差，建议留出一两天余量。"),
    ("信用卡账单里有一笔我不认识的消费，怎么处理？",
     "先不要急着认定是盗刷，可以先核对商户名称（账单上有时显示的是收单机构或公司全称）、交易时间，想想是否是家人用卡、自动续费或会员订阅。如果确认不是本人交易，立即联系发卡行冻结卡片、提交争议处理，并视情况报警。争议处理期间，最好先向银行确认这笔款项是否需要先还，避免因此产生逾期。"),
    ("信用卡还款日碰上周末或者节假日，能顺延吗？",
     "大多数银行的到期还款日不会因为周末或节假日自动顺延，你仍需要在当天或之前还款到账；少数银行会顺延，但不能想当然。跨行转账或第三方渠道还款可能有到账延迟，建议至少提前一两个工作日还款。"),
    ("信用卡欠款太多还不上，能和银行协商分期吗？",
     "可以尝试。按照信用卡业务的监管规定，在持卡人确实无力按约还款、但仍有还款意愿的情况下，发卡行可以与持卡人平等协商，达成个性化分期还款协议，最长期限一般不超过5年。你需要直接联系发卡行的官方客服或网点提出申请，并准备收入下降、疾病等证明材料，是否同意由银行审核决定。要警惕网上收费“代办停息挂账”的中介，它们往往夸大效果、收取高额费用，还可能泄露你的个人信息。",
     [("协商期间征信会怎么样？",
       "已经发生的逾期会按实际情况记录在征信上，协商成功并不能删除之前真实的逾期记录。但达成协议后按约还款，后续就会形成正常的还款记录。协商过程中要以书面协议为准，保留好沟通记录，并且按时履约，否则协议可能失效。")]),
    ("学生可以办信用卡吗？",
     "按照监管要求，银行不得向未满18周岁的学生发放信用卡（附属卡除外）；向已满18周岁但没有稳定收入的学生发卡，需要落实第二还款来源，比如父母的书面同意。如果你还在读书，建议先用借记卡管理生活费，不要为了消费办理多张卡或借网贷，以免超出还款能力。"),
    ("信用卡说的“全额罚息”是什么意思？",
     "“全额罚息”是指：如果你没有在到期还款日前全额还款，哪怕只差一部分，银行会对整期账单的全部消费从各自的记账日起计算利息，而不是只对没还的那部分计息。目前各银行做法不一，有的只对未还部分计息，有的仍按全部账单金额计息。具体以你的领用合约中的“计息规则”为准，办卡或使用前最好看一眼。"),
    ("申请信用卡提额，银行会查我的征信吗？",
     "可能会。银行在审批提额或日常管理时，可以按你在办卡时的授权，以“贷后管理”名义查询征信，这类查询一般不会像新的贷款审批那样被视为申请记录。不过，如果你短期内频繁申请新卡、新贷款，报告上会出现较多“信用卡审批”“贷款审批”查询记录，可能影响后续申请，建议按需申请。"),
    ("出国用信用卡刷卡要注意什么？",
     "出境前可以确认卡片是否支持当地的卡组织、开通境外交易并设置单笔限额，同时记下发卡行的境外挂失电话。境外消费可能产生货币转换费，费率各行和各卡组织不同。在境外商户刷卡时，如果对方提供“以人民币结算”（动态货币转换），汇率往往不划算，一般建议选择当地货币结算。"),
    ("信用卡账单上的“本期应还金额”和“最低还款额”我该还哪个？",
     "最好还“本期应还金额”，也就是全额还款，这样本期消费可以完全免息。“最低还款额”只是不算逾期的最低要求，只还这一部分的话，剩余金额要按日计息。如果本月资金紧张，可以先还最低还款额，之后尽快还清剩余部分，或者比较账单分期的成本后再决定。"),
    ("信用卡逾期了，银行可以联系我的家人和同事吗？",
     "按照监管要求，催收应当合法合规，不得采用暴力、恐吓、侮辱、诽谤等手段，也不得骚扰与债务无关的第三人。如果你遇到频繁骚扰亲友、言语威胁等情况，可以保存通话录音和短信截图，向发卡行投诉，或者拨打金融监管部门的投诉热线12378，涉及威胁人身安全的可以报警。同时也建议主动与银行沟通还款方案，尽量减少逾期时间。"),
    ("What is the difference between the statement date and the payment due date on a credit card?",
     "The statement date is when the bank closes your billing cycle and issues a statement listing the transactions of that cycle. The payment due date is the last day you can pay without being overdue, usually around 20 days after the statement date in China, depending on the issuer. If you pay the full statement balance by the due date, purchases are interest-free; purchases made after the statement date go onto the next statement."),
    ("If I only pay the minimum amount on my credit card, will it hurt my credit report?",
     "Paying at least the minimum amount by the due date is not treated as overdue, so it does not create a late-payment record. However, the unpaid balance loses the interest-free period and is charged revolving interest, commonly 0.05% per day in China, which is about 18.25% a year. Relying on minimum payments for months is expensive, so pay in full whenever you can.",
     [("And what if I can't even pay the minimum?",
       "Then the account is overdue. Besides interest, the issuer may charge a late-payment fee under your card agreement, and the overdue record is reported to the credit reference system. Pay as soon as possible and contact the issuer through its official channels; if you are in real hardship, ask about a repayment plan.")]),
    ("Is taking a cash advance from my credit card a good idea?",
     "Usually not, except in a real emergency. Cash advances normally carry a fee (often around 1% of the amount with a minimum charge) and start accruing interest from the day you withdraw, typically 0.05% per day, with no interest-free period. If you need money for longer than a few days, compare the APR of a regular consumer loan first."),
    ("How can I avoid paying the annual fee on my credit card?",
     "Many standard cards in China waive next year's annual fee if you use the card a certain number of times a year (six swipes is a common rule) or spend a certain amount. Premium cards often have a fixed fee that can only be offset with points, if at all. Check the fee terms when you apply, and cancel cards you no longer use after paying off the balance, so an unpaid fee never turns into an overdue record."),
    ("There is a charge on my credit card that I don't recognize. What should I do?",
     "First check the merchant name and date: statements sometimes show the payment processor's name, and the charge might be a subscription renewal or a family member's purchase. If it is really not yours, freeze the card through the bank's official app or hotline, file a dispute, and report it to the police if fraud is likely. Keep the SMS alerts and statements as evidence, and never share your card number, security code or SMS verification codes."),
]

CONSUMER_LOAN = [
    ("贷款广告里的“年化利率”和“名义利率”有什么区别？",
     "名义利率通常是合同或广告上直接写出的利率，比如“月息0.5%”“日息万分之三”；年化利率（APR）则是把利息、手续费、服务费等借款成本都折算成一年期的比率，更能反映真实成本。如果费用按最初本金计算、而你又按月还本，那么名义利率看起来低，折算成年化利率后可能接近翻倍。按照人民银行的要求，贷款机构在营销时应当以明显方式展示年化利率，比较产品时请以年化利率为准。",
     [("那年化利率一般怎么算？",
       "监管要求采用的年化利率计算方法主要是内部收益率法（IRR），也就是找到一个利率，使你未来每期还款额的现值之和正好等于你实际拿到的借款金额，再把月利率乘以12得到年化利率。这种方法把还本节奏和所有费用都考虑进去了。手工算比较麻烦，可以用表格软件的IRR函数，或者直接要求机构提供。")]),
    ("等额本息和等额本金有什么区别？哪个更划算？",
     "等额本息是每个月还款额固定，前期还款中利息占比高、本金占比低，之后逐步反过来；等额本金是每个月还相同的本金，利息按剩余本金计算，所以月供逐月递减。在同样的本金、利率和期限下，等额本金的总利息更少，因为你更快地归还了本金；但它前期月供更高，对现金流要求更大。所以没有绝对的“更划算”：收入稳定、前期还款能力强，可以考虑等额本金；希望每月还款压力均匀、便于规划，等额本息更合适。",
     [("我刚工作，收入不高但会慢慢涨，选哪个好？",
       "这种情况一般更适合等额本息，因为前期月供比等额本金低，能给你留出生活费和应急资金。等收入上来以后，如果手里有闲钱，还可以考虑部分提前还款来减少利息（先确认合同里有没有提前还款违约金）。选择时建议让月供总额控制在税后收入的三分之一左右，最好不超过一半。"),
      ("等额本金前期多还的钱算不算亏？",
       "不算亏。等额本金前期月供高，是因为你更早地归还了本金，后面要付利息的本金就少了，所以总利息更低。它只是把还款压力前移了，本质上是用更多的前期现金流换取更少的利息。")]),
    ("提前还款划算吗？",
     "要看几方面。第一，贷款利息是按剩余本金计算的，提前还一部分本金，后面的利息就会减少，这一点对等额本息和等额本金都成立。第二，看合同有没有提前还款违约金或手续费，有的合同约定一定期限内提前还款要收费。第三，比较贷款利率和你手里资金的其他用途：如果贷款年化利率明显高于你能稳健获得的收益，提前还款通常更划算；如果贷款利率很低，保留资金、维持充足的应急储备可能更重要。最后，不要为了提前还款把自己的应急资金掏空。"),
    ("听说等额本息还了一半以后再提前还款就不划算了，是真的吗？",
     "这是一个常见误解。等额本息每个月的利息都是按当时的剩余本金乘以月利率计算的，你已经付的利息对应的是你已经占用的资金，并不存在“前期多付了利息、提前还款就吃亏”的问题。提前还款能节省的，是剩余本金在剩余期限内会产生的利息。越到后期，剩余本金越少，提前还款能省下的利息绝对额确实越小，但这不等于“亏了”。是否提前还款，主要看贷款利率、违约金和你的资金规划。"),
    ("提前还贷要交违约金吗？",
     "不一定，取决于合同约定。有的贷款允许随时提前还款、不收任何费用；有的约定在放款后一定期限内提前还款需要支付违约金，例如按提前还款本金的一定比例或若干个月的利息计算。办理前请先查看合同中的“提前还款”条款，或者向贷款机构的官方客服确认，并要求对方告知提前还款后的利息和费用明细。"),
    ("什么是LPR？房贷利率是怎么定的？",
     "LPR是贷款市场报价利率，由报价行按公开市场操作利率加点报价，每月公布一次，分为1年期和5年期以上两个品种。目前新发放的商业性个人住房贷款利率通常以5年期以上LPR为定价基准，再加上或减去一定的基点，具体加点幅度由银行根据当地政策和借款人情况确定。浮动利率的房贷会在合同约定的重定价日，按当时的LPR重新确定利率。"),
    ("消费贷和信用卡分期，哪个成本更低？",
     "不能一概而论，要把两者都换算成年化利率来比。信用卡分期通常按月收手续费，名义费率看着低，但真实年化利率常在10%以上；银行消费贷如果按剩余本金计息，年化利率可能更低，但往往有审批门槛。比较时除了利率，还要看有没有其他费用、能否提前还款、提前还款是否收费。无论选哪种，都建议只借确实需要的金额。"),
    ("贷款写着“日息万分之三”，年化利率是多少？",
     "日息万分之三就是日利率0.03%。按单利粗略折算，年化利率约为0.03% × 365 = 10.95%。如果借款按月复利或收取其他费用，实际年化成本会更高。比较不同产品时，请要求机构提供按内部收益率法计算的年化利率。"),
    ("贷款广告说“月息0.8%”，真实成本高吗？",
     "要看利息是按什么计算的。如果每个月的利息都按剩余本金的0.8%计算，那么年化利率大约就是0.8% × 12 = 9.6%。但如果“月息0.8%”是按最初借款金额计算的，而你每月还在归还本金，那么你实际占用的资金越来越少，真实年化利率会高得多，12期大约在17%左右，期数越长越接近名义利率的两倍。所以一定要问清计息方式，并以机构明示的年化利率为准。"),
    ("申请个人贷款之前要注意什么？",
     "第一，想清楚借款用途和金额，只借确实需要的钱。第二，选择持牌金融机构，通过官方APP或网点申请，不要相信“无视征信、秒批”的小广告。第三，比较年化利率和全部费用，看清还款方式、期限、提前还款和逾期条款。第四，评估还款能力，月供总额最好控制在收入的三分之一左右。第五，正规机构在放款前不会以任何名义要求你先转账交费。"),
    ("同时借了好几笔网贷，会有什么影响？",
     "影响主要有三方面。一是负担加重：多笔借款的月供叠加，很容易超出收入，逾期风险上升。二是征信上会留下多个贷款账户和审批查询记录，后续申请房贷、车贷时，银行可能认为你负债过高或资金紧张，从而降低额度或拒贷。三是容易陷入“以贷养贷”，利息越滚越多。如果已经借了多笔，建议列出每笔的余额、年化利率和到期日，优先偿还利率最高的，并停止新增借款。"),
    ("为什么我的贷款申请被拒了？",
     "常见原因包括：征信上有逾期记录或近期查询次数过多；现有负债占收入比例过高；收入证明不足或工作不稳定；填写的信息与核实结果不一致；年龄、所在地区或职业不符合产品要求等。可以先查看自己的个人信用报告，看看有没有异常或错误；如果是负债过高，建议先降低负债再申请。不要因为被拒就转向来路不明的“包下款”中介，那里往往藏着高额收费和诈骗。"),
    ("帮朋友做贷款担保人有什么风险？",
     "风险不小。如果你提供的是连带责任保证，借款人到期不还时，债权人可以直接要求你在担保范围内还款，而不必先去追讨借款人。担保信息也会记录在你的个人信用报告里，被担保的贷款如果出现逾期，可能影响你自己的贷款审批。所以担保前要了解借款人的真实情况、借款金额和用途，量力而行，不要碍于情面随意签字。"),
    ("“先息后本”的贷款是什么意思？",
     "先息后本是指借款期间每个月只还利息，到期时一次性归还全部本金。它的优点是前期月供压力小，缺点是到期时还款压力大，而且由于本金一直没减少，在同样利率和期限下，总利息通常比等额本息、等额本金都多。选择这种方式前，要确认到期时有足够的资金归还本金，不要指望到时再借新还旧。"),
    ("贷款逾期会有什么后果？",
     "一般会有这些后果：按合同计收罚息和违约金，使借款成本上升；逾期信息报送征信，影响今后申请信用卡、房贷和车贷；持续逾期还可能面临催收，甚至被起诉，法院判决后仍不履行的，可能被列为失信被执行人并限制高消费。如果预计还不上，最好在到期前主动联系贷款机构，说明情况并协商延期或调整还款计划。"),
    ("我在一个APP上借钱，为什么合同上的放款方是银行？",
     "这很常见。很多互联网平台提供的是“助贷”或“联合贷款”服务：平台负责获客和风控协助，实际出资方是银行、消费金融公司等持牌机构。你应当关注合同中的放款机构名称、年化利率和各项费用，还款和征信报送也由出资机构负责。如果平台另外收取会员费、服务费等，这些费用也应计入综合借款成本。"),
    ("消费金融公司是正规机构吗？",
     "持牌消费金融公司是经金融监管部门批准设立的非银行金融机构，可以依法发放个人消费贷款，属于正规机构。判断是否正规，可以在国家金融监督管理总局官网查询机构名单和许可证信息。注意区分持牌机构与打着“消费金融”旗号的无牌平台或中介，后者可能存在高利贷、暴力催收和信息泄露问题。"),
    ("贷款时平台让我开通会员才能借款，合理吗？",
     "需要警惕。把开通会员、购买保险或其他服务作为放款的前提条件，属于捆绑搭售，不符合金融消费者权益保护的要求，这些费用实际上也抬高了借款成本，应当计入年化利率来比较。你可以拒绝不必要的附加服务；如果被强制收费，可以保留截图证据，向机构投诉，或拨打金融监管投诉热线12378反映。"),
    ("消费贷的钱可以拿去买房或者炒股吗？",
     "不可以。个人消费贷款应当用于约定的消费用途，比如装修、购车、教育、旅游等，不得用于购房、投资股票、基金、理财等。贷款机构发现资金挪用的，可以要求提前收回贷款，并可能影响你今后的借款。用借来的钱投资，还会把投资风险和还款压力叠加在一起，非常危险。"),
    ("被网贷公司暴力催收了怎么办？",
     "你有依法维护自身权益的权利。催收方不得采用暴力、威胁、恐吓、侮辱、诽谤等方式，也不得骚扰与债务无关的亲友和同事。遇到这种情况，可以这样做：保存通话录音、短信、聊天截图等证据；向放款机构投诉；向金融监管部门投诉（可拨打12378）；如果遭到人身威胁或个人信息被公开，应当报警。同时，合法的欠款仍然需要偿还，可以主动和机构协商可行的还款计划。"),
    ("能用经营贷的钱来提前还房贷吗？",
     "不可以。经营贷应当用于企业或个体工商户的生产经营，把经营贷资金挪用于偿还房贷或投向房地产，属于违规行为。银行发现后可以提前收回贷款、要求一次性还清，还可能影响你的信用记录。如果你想降低房贷成本，应当咨询银行是否有合规的利率调整或转贷政策。"),
    ("公积金贷款和商业贷款有什么区别？",
     "公积金贷款是由住房公积金管理中心发放的政策性住房贷款，利率通常低于商业贷款，但需要连续缴存公积金达到一定时间，贷款额度也有上限，具体规则各地不同。商业贷款由银行发放，额度更灵活，但利率更高。两者可以组合使用，即“组合贷”。申请前可以咨询当地公积金中心和银行，比较额度、利率和办理时间。"),
    ("贷款期限选长一点好还是短一点好？",
     "期限越长，月供越低，但总利息越多；期限越短，月供越高，但总利息越少。选择时主要看你的还款能力和资金规划：在确保月供不超出承受范围、并保留应急资金的前提下，期限可以适当缩短；如果收入不稳定，宁可选长一点的期限，之后有余力再部分提前还款（先确认是否收违约金）。"),
    ("为什么我和同事在同一家银行贷款，利率却不一样？",
     "银行通常实行风险定价，会根据借款人的信用记录、收入稳定性、负债水平、贷款期限、担保方式以及与银行的业务往来等因素确定利率。信用记录良好、收入稳定、负债低的客户往往能获得更低的利率。此外，不同时间申请时市场利率水平和银行的营销政策也可能不同。"),
    ("借钱时对方先把利息从本金里扣掉，这样合法吗？",
     "这就是常说的“砍头息”。根据《民法典》第六百七十条，借款的利息不得预先在本金中扣除；利息预先在本金中扣除的，应当按照实际借款数额返还借款并计算利息。比如合同写借1万元，但实际只到账8000元，那么应按8000元作为本金计算。遇到这种情况要保留转账记录和合同，必要时向监管部门投诉或寻求法律帮助。"),
    ("民间借贷的利率多高就不受法律保护了？",
     "根据最高人民法院2020年修订的民间借贷司法解释，借贷双方约定的利率超过合同成立时一年期贷款市场报价利率（LPR）四倍的部分，人民法院不予支持。需要注意，这一规定针对的是民间借贷，持牌金融机构的贷款适用金融监管的相关规定。无论向谁借钱，都建议签书面合同、通过银行转账，并保留好凭证。"),
    ("车贷广告说“0利息”，是真的不要钱吗？",
     "不一定。很多“0息”“0利率”车贷是厂商贴息，利息确实由厂商承担，但可能通过其他方式收回成本，比如收取手续费、服务费、GPS安装费，要求购买指定保险，或者车价不能再优惠。判断是否划算，要把所有额外费用加起来，和全款购车或其他贷款方案比较总支出，并要求对方提供书面的费用清单和年化利率。"),
    ("每个月还款额占收入多少比较合适？",
     "常见的经验是：所有贷款和信用卡分期的月供加起来，控制在税后月收入的三分之一左右比较稳妥，一般不宜超过一半。同时，最好预留3到6个月生活开支的应急资金，以应对失业、生病等意外情况。银行在审批时也会评估你的负债收入比，比例过高可能会被拒贷或降低额度。"),
    ("房贷还不上了怎么办？",
     "首先不要回避，尽早联系贷款银行说明困难，询问能否延长贷款期限、调整还款方式或申请阶段性延期，银行会根据你的情况和政策审核。其次梳理家庭收支，压缩非必要开支，优先保障房贷按时还款，因为房贷逾期不仅影响征信，长期逾期还可能导致抵押房产被依法处置。不要为了还房贷去借高利贷或网贷，以免越陷越深。",
     [("如果最后真的还不上，房子会被怎样处理？",
       "如果长期逾期且协商无果，银行可以依据抵押合同通过诉讼等法律程序处置抵押房产，比如拍卖或变卖，用所得款项偿还贷款本息和相关费用，剩余部分归还借款人，不足部分借款人仍需继续偿还。这个过程耗时较长、成本较高，对家庭影响很大，所以在出现困难的早期就与银行沟通、主动寻找解决方案，要比被动等待好得多。")]),
    ("What is the difference between APR and the nominal interest rate on a loan?",
     "The nominal rate is the headline rate in an ad or contract, such as '0.5% per month'. The APR (annual percentage rate) converts all borrowing costs, including interest, handling fees and service fees, into an annual rate, so it reflects the real cost. If fees are charged on the original principal while you repay principal every month, the APR can be close to double the nominal rate. In China lenders are required to display the annualized rate clearly, so always compare products by APR."),
    ("Which is better: equal monthly installments or equal principal repayments?",
     "With equal installments (等额本息) every monthly payment is the same, which is easy to plan. With equal principal (等额本金) you repay the same principal each month plus interest on the remaining balance, so payments start higher and fall over time. For the same amount, rate and term, equal principal costs less total interest because you pay principal back faster, but it needs more cash early on. Choose based on your cash flow rather than on total interest alone."),
    ("Should I pay off my loan early?",
     "It depends on three things. First, check whether the contract charges a prepayment penalty. Second, compare the loan's APR with what your money could safely earn elsewhere: if the loan is expensive, prepaying usually saves money. Third, keep an emergency fund of several months of expenses; don't empty your savings just to prepay. Interest is charged on the remaining principal, so prepaying always reduces future interest."),
    ("A lender offers me a '0% interest' loan. Is it really free?",
     "Not necessarily. Some '0% interest' offers replace interest with handling fees, service fees, mandatory insurance or a membership charge, and the real annualized cost can be significant. Ask for a written list of all fees and the APR calculated with the IRR method, and compare the total amount you will repay with the amount you actually receive."),
    ("What happens if I miss a payment on my personal loan?",
     "Usually you will be charged penalty interest or a late fee under the contract, and the overdue record can be reported to the credit reference system, which may affect future applications for mortgages or cards. Long-term default can lead to collection and legal action. If you expect trouble, contact the lender before the due date and ask about rescheduling; lenders are generally more flexible early on."),
]
