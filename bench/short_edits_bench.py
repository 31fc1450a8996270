"""Near-duplicates of SHORT texts with a few characters edited, in every script (stage 5's filter).

Run (from the repo root):
    .venv/bin/python bench/short_edits_bench.py                      # 30,000 and 300,000 rows
    .venv/bin/python bench/short_edits_bench.py --rows 300000        # one size
    .venv/bin/python bench/short_edits_bench.py --rows 30000 --misses 5   # + missed and lost pairs
    .venv/bin/python bench/short_edits_bench.py --rows 300000 --shards 4  # the sharded filter

What it measures: planted duplicates found per script x length (8, 12, 20 words) x edited characters (0:
an exact copy, 1, 2, 3), unique rows lost (dropped as a duplicate of a row of another group), planted copies
joined to another group, rows dropped by a rule, and the filter's wall time, CPU time and peak memory (a
child process runs it through the function `personaloom filter` runs; the equivalent command is printed).

The rows (written for this benchmark; nothing in the filter was tuned on them): for each of Chinese,
Japanese, Thai (written without spaces), Arabic, Russian, Hindi, English and Spanish, and each length,
templates of common words of the language with 3, 4 or 5 slots (a name, a city, a product, an amount, a
second product), SIBLINGS rows each, so rows of one template share most of their words, as templated data
does (their common words are not slot values, and two templates share at most half of them). A template's
rows take their slot values from a Reed-Solomon code over GF(37) (as in bench/filter_bench.py): two of them
share at most one slot value. A row is kept as unique only if every earlier row of its template is at most
UNIQUE_MAX_RATIO alike to it in what the filter scores (words; characters in a script without spaces) and,
in a script with spaces, at least UNIQUE_MIN_CHARS characters away (Levenshtein distance): a 1-3 character
typo is never the distance between two unique rows, yet many unique rows are more than 86% alike in
characters (the bench counts them: a filter that joined rows on characters alone would drop them).
10% of the rows are planted duplicates of a random unique row, in equal shares: exact copies and copies with
1, 2 or 3 characters edited (substituted, inserted or deleted, anywhere in the text including inside words
and on spaces, never the final punctuation; the inserted letters are the script's own; the edits are that
many characters apart from the row once normalized). All rows are shuffled together, as one file. A copy
edited to less than 86% alike to its row in characters (3 edits in a 20-character Chinese text) is counted
apart ("beyond"): no rule at the threshold may join it.

Rows are generated once per size into bench/results/short_edits_rows<N>_seed<S>.parquet (with the
ground truth: `group`, the unique row a row was made from, `kind`, `edits`, `lang`, `length`, `template`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Indel, Levenshtein

P = 37  # slot values per slot (prime): P * P codewords per template
LENGTHS = (8, 12, 20)
SLOT_COUNT = {8: 3, 12: 4, 20: 5}
SLOT_KINDS = ("name", "city", "thing", "number", "thing")  # the first SLOT_COUNT[length] of them
SIBLINGS = 60  # rows per template (as many templates per script and length as it takes)
EDITS = (0, 1, 2, 3)  # characters edited in a planted copy (0: an exact copy)
PLANTED_SHARE = 0.10
UNIQUE_MIN_CHARS = 6  # two unique rows of a template differ in at least this many characters
# ... and are at most this alike (rapidfuzz ratio) in words, or in characters in a script without spaces
UNIQUE_MAX_RATIO = 80.0
THRESHOLD = 86.0  # the filter's default near_dup.threshold, for the "alike in characters" counts
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Script:
    code: str
    spaced: bool
    words: tuple[str, ...]  # common words the templates are made of
    names: tuple[str, ...]
    cities: tuple[str, ...]
    things: tuple[str, ...]  # products: adjective x noun
    number: str  # format of an amount from {n}
    end: str  # the final punctuation


def _w(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _things(adjectives: str, nouns: str, form: str) -> tuple[str, ...]:
    return tuple(form.format(adj=a, noun=n) for a in adjectives.split() for n in nouns.split())


SCRIPTS: dict[str, Script] = {
    "zh": Script(
        "zh",
        False,
        _w(
            "我们 你们 今天 明天 可以 需要 想要 一下 一起 时候 什么 怎么 因为 所以 但是 如果 已经 还是 "
            "或者 比较 非常 特别 应该 可能 知道 觉得 帮忙 推荐 安排 计划 预算 价格 朋友 家人 孩子 周末 "
            "晚上 早上 下午 公司 学校 医院 附近 地方 时间 问题 办法 方便 便宜 简单 重要 马上 最近 现在 "
            "以后 之前 准备 参加 购买 预订 旅行 餐厅 酒店 机票 火车 地铁 请问 帮我 告诉 看看 找到 选择 "
            "的 了 在 是 和 去 买 要 给 从 到 吗 呢 吧"
        ),
        _w(
            "王磊 李娜 张伟 刘洋 陈静 杨帆 黄敏 赵军 吴倩 周涛 徐丽 孙浩 马超 朱婷 胡斌 郭晶 何勇 高峰 "
            "林芳 罗杰 郑爽 梁宇 谢丹 宋佳 唐亮 韩雪 冯刚 邓颖 曹阳 彭辉 曾琳 肖鹏 田甜 董明 潘悦 袁凯 "
            "蔡萍 蒋波 于慧 杜鑫"
        ),
        _w(
            "北京 上海 广州 深圳 成都 杭州 武汉 西安 南京 重庆 天津 苏州 长沙 郑州 青岛 沈阳 大连 厦门 "
            "昆明 哈尔滨 济南 福州 合肥 南昌 贵阳 南宁 兰州 太原 石家庄 呼和浩特 乌鲁木齐 拉萨 海口 三亚 "
            "桂林 丽江 宁波 无锡"
        ),
        _things(
            "便宜的 轻便的 二手的 防水的 大容量的 静音的",
            "笔记本电脑 电饭煲 自行车 双肩包 吸尘器 蓝牙耳机 空气净化器",
            "{adj}{noun}",
        ),
        "{n}元",
        "？",
    ),
    "ja": Script(
        "ja",
        False,
        _w(
            "私は 明日 今日 週末 家族と 友達と 予約 したい です ください 教えて おすすめ 近くの レストラン "
            "ホテル 駅 会社 学校 病院 時間 予算 いくら どこ 何 どうやって 方法 準備 旅行 買い物 電車 "
            "飛行機 必要 大丈夫 簡単 一緒に 来週 午後 夜 朝 場所 問題 相談 お願い できれば もう少し "
            "ちょっと 新しい 便利な 有名な 探して 行きたい 見たい 食べたい 調べて 比べて 決めたい 使える "
            "予定 連絡 返事 手伝って から まで ので けど でも また"
        ),
        _w(
            "佐藤健 鈴木愛 高橋翔 田中花子 渡辺誠 伊藤舞 山本大輔 中村彩 小林拓海 加藤恵 吉田蓮 山田優子 "
            "佐々木陸 山口美咲 松本浩 井上七海 木村直樹 林さくら 清水亮 山崎遥 森健太 阿部結衣 池田聡 "
            "橋本茜 石川翼 山下理沙 小川哲也 石井真理 長谷川湊 後藤明日香 岡田和樹 近藤芽依 前田雄介 "
            "藤田智子 遠藤悠斗 青木凛 坂本一郎 比嘉渚"
        ),
        _w(
            "東京 大阪 京都 名古屋 横浜 札幌 福岡 神戸 仙台 広島 金沢 奈良 那覇 長崎 熊本 鹿児島 静岡 "
            "浜松 岡山 松山 高松 新潟 長野 函館 旭川 青森 盛岡 秋田 山形 福島 宇都宮 前橋 甲府 富山 岐阜 "
            "和歌山 鳥取 松江"
        ),
        _things(
            "安い 軽い 中古の 防水の 大容量の 静かな",
            "ノートパソコン 炊飯器 自転車 リュック 掃除機 イヤホン 空気清浄機",
            "{adj}{noun}",
        ),
        "{n}円",
        "？",
    ),
    "th": Script(
        "th",
        False,
        _w(
            "ผม ฉัน คุณ อยาก ต้องการ ช่วย แนะนำ หน่อย วันนี้ พรุ่งนี้ สุดสัปดาห์ ครอบครัว เพื่อน ร้านอาหาร "
            "โรงแรม สถานี ราคา งบประมาณ เวลา ที่ไหน อะไร อย่างไร ไป มา ซื้อ จอง เดินทาง รถไฟ เครื่องบิน "
            "ใกล้ ถูก แพง ดี ใหม่ สะดวก ง่าย สำคัญ ตอนเย็น ตอนเช้า ช่วงบ่าย ทำงาน โรงเรียน โรงพยาบาล "
            "ปัญหา วิธี เตรียม วางแผน ค้นหา เลือก เปรียบเทียบ ตัดสินใจ ติดต่อ ส่ง ข้อมูล รายการ คำถาม "
            "คำตอบ ได้ไหม ครับ ค่ะ ด้วย มาก ที่สุด"
        ),
        _w(
            "สมชาย สมหญิง มาลี ศิริพร กัญญา ณัฐธิดา สุดา วนิดา รัตนา ชนิดา พรทิพย์ จินตนา นงลักษณ์ กนกวรรณ "
            "อารี ธิดา ปราณี สุภาพร สมศักดิ์ ประเสริฐ สุชาติ วิชัย สมบัติ สุรชัย อนันต์ ธนากร กิตติศักดิ์ "
            "ชัยวัฒน์ ณรงค์ พิชัย บุญมี ศักดา ตะวัน ณัฐพงศ์ อภิชาติ วิรัตน์ ธวัชชัย สมเกียรติ"
        ),
        _w(
            "กรุงเทพ เชียงใหม่ ภูเก็ต ขอนแก่น อุดรธานี นครราชสีมา หาดใหญ่ พัทยา เชียงราย อยุธยา สุโขทัย "
            "กาญจนบุรี หัวหิน ระยอง ชลบุรี นครปฐม ลำปาง น่าน แพร่ พิษณุโลก นครสวรรค์ อุบลราชธานี "
            "สุราษฎร์ธานี กระบี่ ตรัง สงขลา ปัตตานี ยะลา เพชรบุรี ราชบุรี จันทบุรี ตราด ลพบุรี สระบุรี ชุมพร "
            "แม่ฮ่องสอน บุรีรัมย์"
        ),
        _things(
            "ราคาถูก น้ำหนักเบา มือสอง กันน้ำ ความจุสูง เสียงเงียบ",
            "โน้ตบุ๊ก หม้อหุงข้าว จักรยาน กระเป๋าเป้ เครื่องดูดฝุ่น หูฟัง เครื่องฟอกอากาศ",
            "{noun}{adj}",
        ),
        "{n}บาท",
        "?",
    ),
    "ar": Script(
        "ar",
        True,
        _w(
            "أريد أحتاج ساعدني فضلك اليوم غدا الأسبوع العائلة الأصدقاء مطعم فندق محطة سعر ميزانية وقت أين "
            "ماذا كيف لماذا هل يمكن السفر القطار الطائرة قريب رخيص جديد سهل مهم مساء صباح العمل المدرسة "
            "المستشفى مشكلة طريقة تحضير خطة البحث اختيار مقارنة قرار التواصل إرسال معلومات قائمة سؤال "
            "جواب جدا أفضل أيضا الآن ربما الحجز الشراء زيارة المدينة الشقة الموعد الطريق المكتب"
        ),
        _w(
            "فاطمة مريم سلمى ياسمين حبيبة فريدة آية رنا دينا هبة منى نهى أميرة شيماء نسمة هدى سميرة زينب "
            "ليلى محمد أحمد محمود مصطفى يوسف عمر علي حسن حسين إبراهيم خالد طارق عمرو كريم شريف هاني وليد "
            "عادل"
        ),
        _w(
            "القاهرة الإسكندرية الجيزة الأقصر أسوان بورسعيد السويس الإسماعيلية المنصورة طنطا الزقازيق دمياط "
            "المنيا أسيوط سوهاج قنا الفيوم الغردقة دهب العريش سيوة بنها دمنهور الرياض جدة دبي أبوظبي الدوحة "
            "عمان بيروت تونس الرباط مسقط الكويت المنامة الخرطوم طرابلس"
        ),
        _things("رخيص خفيف مستعمل جديد صغير هادئ", "هاتف حاسوب مكيف تلفاز كرسي مكتب خلاط", "{noun} {adj}"),
        "{n}",
        "؟",
    ),
    "ru": Script(
        "ru",
        True,
        _w(
            "я мне хочу нужно помогите пожалуйста сегодня завтра выходные семья друзья ресторан гостиница "
            "вокзал цена бюджет время где что как почему можно поездка поезд самолёт рядом дешёвый новый "
            "простой важный вечером утром днём работа школа больница проблема способ подготовка план поиск "
            "выбор сравнить решить связаться отправить информация список вопрос ответ очень лучше тоже "
            "сейчас может быть заказать купить посетить квартира встреча дорога офис"
        ),
        _w(
            "Александр Дмитрий Максим Сергей Андрей Алексей Артём Илья Кирилл Михаил Никита Матвей Роман "
            "Егор Иван Владимир Павел Николай Анна Мария Елена Ольга Наталья Татьяна Ирина Светлана "
            "Екатерина Анастасия Дарья Юлия Ксения Полина Виктория Алина Вера Галина Людмила"
        ),
        _w(
            "Москва Казань Новосибирск Екатеринбург Самара Омск Уфа Красноярск Пермь Воронеж Волгоград "
            "Краснодар Саратов Тюмень Тольятти Ижевск Барнаул Ульяновск Иркутск Хабаровск Ярославль "
            "Владивосток Махачкала Томск Оренбург Кемерово Рязань Астрахань Пенза Липецк Калининград Тула "
            "Киров Сочи Мурманск Архангельск Смоленск"
        ),
        _things(
            "недорогой лёгкий подержанный водонепроницаемый компактный тихий",
            "ноутбук велосипед рюкзак пылесос холодильник телевизор чайник",
            "{adj} {noun}",
        ),
        "{n}",
        "?",
    ),
    "hi": Script(
        "hi",
        True,
        _w(
            "मैं मुझे आप कृपया मदद चाहिए आज कल सप्ताहांत परिवार दोस्त रेस्टोरेंट होटल स्टेशन कीमत बजट समय "
            "कहाँ क्या कैसे क्यों सकते यात्रा ट्रेन जहाज़ पास सस्ता नया आसान ज़रूरी शाम सुबह दोपहर काम "
            "स्कूल अस्पताल समस्या तरीका तैयारी योजना खोज चुनना तुलना फ़ैसला संपर्क भेजना जानकारी सूची "
            "सवाल जवाब बहुत बेहतर भी अभी शायद बुकिंग खरीदना घूमना शहर घर मुलाकात रास्ता दफ़्तर"
        ),
        _w(
            "राहुल अमित सुनील विकास अजय रोहित संजय अनिल विजय मनोज राजेश सुरेश दीपक अर्जुन आदित्य करण निखिल "
            "प्रिया पूजा नेहा अंजलि सुनीता कविता रेखा मीना सीमा आरती दिव्या स्नेहा श्रुति कोमल पायल रिया ईशा "
            "तनवी साक्षी गौरव"
        ),
        _w(
            "दिल्ली मुंबई कोलकाता चेन्नई बेंगलुरु हैदराबाद पुणे अहमदाबाद जयपुर लखनऊ कानपुर नागपुर इंदौर "
            "भोपाल पटना वाराणसी आगरा अमृतसर चंडीगढ़ देहरादून शिमला ऋषिकेश उदयपुर जोधपुर सूरत वडोदरा नासिक "
            "गोवा कोच्चि मैसूर रांची गुवाहाटी भुवनेश्वर रायपुर ग्वालियर मेरठ प्रयागराज"
        ),
        _things("सस्ता हल्का पुराना नया छोटा बढ़िया", "लैपटॉप फ़ोन पंखा कूलर फ्रिज मिक्सर प्रिंटर", "{adj} {noun}"),
        "{n}",
        "?",
    ),
    "en": Script(
        "en",
        True,
        _w(
            "please help me find best way plan make need want know tell show explain give write some good "
            "new next week today tomorrow trip budget list ideas tips steps guide simple quick easy local "
            "family friends kids team work home office school project meeting report schedule dinner lunch "
            "weekend holiday birthday gift party course class exam review summary email letter question "
            "problem compare choose recommend book order visit travel hotel flight train morning evening"
        ),
        _w(
            "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard "
            "Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Lisa Daniel Nancy Matthew Betty "
            "Anthony Margaret Mark Sandra Donald Ashley Steven Kimberly Paul Emily Andrew Donna Joshua"
        ),
        _w(
            "London Paris Berlin Madrid Rome Vienna Prague Dublin Lisbon Boston Chicago Denver Seattle "
            "Austin Dallas Houston Phoenix Atlanta Miami Portland Toronto Montreal Vancouver Sydney "
            "Melbourne Auckland Tokyo Osaka Seoul Singapore Bangkok Mumbai Cairo Nairobi Lagos Oslo Helsinki "
            "Stockholm"
        ),
        _things(
            "cheap light used quiet small new",
            "laptop kettle bicycle backpack vacuum headphones printer",
            "{adj} {noun}",
        ),
        "{n}",
        "?",
    ),
    "es": Script(
        "es",
        True,
        _w(
            "quiero necesito ayuda favor hoy mañana semana familia amigos restaurante hotel estación precio "
            "presupuesto tiempo dónde qué cómo puedo viaje tren avión cerca barato nuevo fácil importante "
            "tarde noche trabajo escuela hospital problema manera preparar plan buscar elegir comparar "
            "decidir contactar enviar información lista pregunta respuesta muy mejor también ahora quizás "
            "reservar comprar visitar ciudad piso cita camino oficina"
        ),
        _w(
            "Lucía Sofía María Martina Paula Julia Daniela Valeria Alba Emma Carla Sara Noa Carmen Laura "
            "Elena Ana Marta Irene Clara Hugo Martín Lucas Mateo Leo Daniel Alejandro Pablo Manuel Álvaro "
            "Adrián David Mario Diego Javier Sergio Jorge Andrés Carlos Miguel"
        ),
        _w(
            "Madrid Barcelona Valencia Sevilla Zaragoza Málaga Murcia Palma Bilbao Alicante Córdoba "
            "Valladolid Vigo Gijón Granada Oviedo Pamplona Almería Burgos Salamanca Toledo Cádiz León "
            "Logroño Huelva Tarragona Lleida Girona Santander Badajoz Cáceres Segovia Ávila Soria Teruel "
            "Cuenca Lugo Ourense"
        ),
        _things(
            "barato ligero usado silencioso pequeño nuevo",
            "portátil hervidor bicicleta mochila aspiradora auriculares impresora",
            "{noun} {adj}",
        ),
        "{n}",
        "?",
    ),
}
NUMBERS = [str(120 + 53 * i) for i in range(P)]  # amounts of 3-4 digits


def plain(text: str, spaced: bool) -> str:
    """What rows are compared on here (much as the filter normalizes them): NFKC, lowercase, letters, marks,
    digits and single spaces (no spaces at all in a script written without them)."""
    folded = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(ch if unicodedata.category(ch)[0] in "LMN" else " " for ch in folded)
    return " ".join(kept.split()) if spaced else "".join(kept.split())


_WORD_CODES: dict[str, str] = {}


def word_codes(text: str) -> str:
    """One code point per distinct word: rapidfuzz's ratio of these is the ratio of word tokens."""
    return "".join(_WORD_CODES.setdefault(w, chr(0x10000 + len(_WORD_CODES))) for w in text.split())


def letters(script: Script) -> list[str]:
    """The letters (and combining marks) the script's own words are written with: what an edit inserts."""
    chars = {
        ch
        for text in (*script.words, *script.names, *script.cities, *script.things)
        for ch in text.lower()
        if unicodedata.category(ch)[0] in "LM"
    }
    return sorted(chars)


def codeword(j: int, slots: int) -> list[int]:
    """Slot values of a template's row j: m0 + m1*x at x = 1..slots over GF(P); two rows share <= 1."""
    m1, m0 = divmod(j, P)
    return [(m0 + m1 * x) % P for x in range(1, slots + 1)]


def make_template(script: Script, length: int, rng: np.random.Generator) -> list[str]:
    """A template of `length` words: common words with slot markers ("{0}", "{1}", ...) at random places."""
    slots = SLOT_KINDS[: SLOT_COUNT[length]]
    # spaced scripts: a product is two words, so a template has one fixed word less per product
    fixed = length - len(slots) - (sum(kind == "thing" for kind in slots) if script.spaced else 0)
    slot_words = {w for value in (*script.names, *script.cities, *script.things) for w in value.split()}
    common = [w for w in script.words if w not in slot_words]  # slot values are never common words
    parts = [str(w) for w in rng.choice(common, fixed, replace=False)]
    for k, at in enumerate(sorted(rng.choice(np.arange(fixed + 1), len(slots), replace=False))[::-1]):
        parts.insert(int(at), f"{{{len(slots) - 1 - k}}}")
    return parts


def fill(script: Script, template: list[str], values: list[str]) -> str:
    words = [values[int(p[1:-1])] if p.startswith("{") else p for p in template]
    text = (" " if script.spaced else "").join(words)
    return text[0].upper() + text[1:] + script.end


def template_rows(script: Script, template: list[str], want: int, rng: np.random.Generator) -> list[str]:
    """Up to `want` rows of a template, each far enough from the earlier ones (see the module doc)."""
    slots = SLOT_KINDS[: sum(w.startswith("{") for w in template)]
    pools = {"name": script.names, "city": script.cities, "thing": script.things, "number": NUMBERS}
    perms = [rng.permutation(len(pools[kind]))[:P] for kind in slots]
    keys: list[str] = []
    scored: list[str] = []
    rows: list[str] = []
    for j in rng.permutation(P * P):
        if len(rows) == want:
            break
        code = codeword(int(j), len(slots))
        values = [pools[kind][int(perm[v])] for kind, perm, v in zip(slots, perms, code, strict=True)]
        values = [
            script.number.format(n=v) if k == "number" else v for k, v in zip(slots, values, strict=True)
        ]
        text = fill(script, template, values)
        key = plain(text, script.spaced)
        score = word_codes(key) if script.spaced else key
        if not too_close(key, score, keys, scored, script.spaced):
            keys.append(key)
            scored.append(score)
            rows.append(text)
    return rows


def too_close(key: str, score: str, keys: list[str], scored: list[str], spaced: bool) -> bool:
    """Whether a row is too close to one of some others to be a unique row of its own."""
    if process.extractOne(score, scored, scorer=fuzz.ratio, score_cutoff=UNIQUE_MAX_RATIO + 1e-6):
        return True
    cutoff = UNIQUE_MIN_CHARS - 1
    return (
        spaced and process.extractOne(key, keys, scorer=Levenshtein.distance, score_cutoff=cutoff) is not None
    )


def template_far(template: list[str], others: list[list[str]]) -> bool:
    """Whether a template's fixed words share at most half of them, in order, with each other template's.
    Slot values are not common words, so rows of two such templates share at most half their fixed words
    plus their slot words: at most 75% (8 words), 79% (12) or 80% (20) alike in words."""
    fixed = word_codes(" ".join(w for w in template if not w.startswith("{")))
    for other in others:
        theirs = word_codes(" ".join(w for w in other if not w.startswith("{")))
        if Indel.similarity(fixed, theirs) / 2 > len(fixed) // 2:
            return False
    return True


def unique_rows(
    script: Script, length: int, n: int, rng: np.random.Generator
) -> tuple[list[str], list[int], dict[str, float]]:
    """n unique rows of `length` words and the template of each: templates of up to SIBLINGS rows, as many
    as it takes, each far from the others (`template_far`). Also: how alike the unique rows of a template
    are (pairs at least THRESHOLD alike in characters, the most alike pair)."""
    rows: list[str] = []
    which: list[int] = []
    templates: list[list[str]] = []
    alike = {"pairs": 0.0, "char_ratio_ge_threshold": 0.0, "max_char_ratio": 0.0}
    while len(rows) < n:
        template = make_template(script, length, rng)
        if not template_far(template, templates):
            continue
        mine = template_rows(script, template, min(SIBLINGS, n - len(rows)), rng)
        keys = [plain(t, script.spaced) for t in mine]
        chars = process.cdist(keys, keys, scorer=fuzz.ratio, workers=-1, dtype=np.float32)
        np.fill_diagonal(chars, 0)
        alike["pairs"] += len(keys) * (len(keys) - 1) / 2
        alike["char_ratio_ge_threshold"] += float((chars >= THRESHOLD).sum()) / 2
        alike["max_char_ratio"] = max(alike["max_char_ratio"], float(chars.max()))
        which += [len(templates)] * len(mine)
        templates.append(template)
        rows += mine
    return rows, which, {**alike, "templates": float(len(templates))}


def edit_chars(text: str, edits: int, pool: list[str], rng: np.random.Generator) -> str:
    """`edits` random single-character edits (substitute / insert / delete) anywhere but the final mark."""
    chars = list(text[:-1])
    for _ in range(edits):
        op = int(rng.integers(3))
        at = int(rng.integers(len(chars) + (op == 1)))
        new = pool[int(rng.integers(len(pool)))]
        if op == 0:
            while new == chars[at].lower():
                new = pool[int(rng.integers(len(pool)))]
            chars[at] = new
        elif op == 1:
            chars.insert(at, new)
        else:
            del chars[at]
    return "".join(chars) + text[-1]


def generate(n_rows: int, seed: int = 7) -> tuple[pl.DataFrame, dict[str, dict[str, float]]]:
    """Rows of every script and length with their ground truth, shuffled; how alike unique rows are."""
    rng = np.random.default_rng(seed)
    cells = [(code, length) for code in SCRIPTS for length in LENGTHS]
    frames = []
    alike: dict[str, dict[str, float]] = {}
    for c, (code, length) in enumerate(cells):
        script = SCRIPTS[code]
        rows_here = n_rows // len(cells) + (c < n_rows % len(cells))
        n_planted = round(rows_here * PLANTED_SHARE)
        base, template, alike[f"{code}/{length}"] = unique_rows(script, length, rows_here - n_planted, rng)
        pool = letters(script)
        texts, groups, kinds, edits = (
            list(base),
            list(range(len(base))),
            ["base"] * len(base),
            [-1] * len(base),
        )
        for i, src in enumerate(rng.integers(len(base), size=n_planted)):
            e = EDITS[i % len(EDITS)]
            source = base[int(src)]
            copy = edit_chars(source, e, pool, rng)
            # e edits, as the filter sees the texts (edits that cancel out, a deleted one-letter word,
            # a Devanagari letter that composes with the nukta after it: drawn again)
            while Levenshtein.distance(plain(copy, script.spaced), plain(source, script.spaced)) != e:
                copy = edit_chars(source, e, pool, rng)
            texts.append(copy)
            groups.append(int(src))
            kinds.append("exact" if e == 0 else f"edit{e}")
            edits.append(e)
        frames.append(
            pl.DataFrame(
                {
                    "text": texts,
                    "lang": [code] * len(texts),
                    "length": [length] * len(texts),
                    "group": [f"{code}/{length}/{g}" for g in groups],
                    "template": [f"{code}/{length}/{template[g]}" for g in groups],
                    "kind": kinds,
                    "edits": edits,
                }
            )
        )
    df = pl.concat(frames)
    df = df[rng.permutation(df.height).tolist()]
    return df.with_row_index("row_id").with_columns(pl.col("row_id").cast(pl.String)), alike


def dataset(n_rows: int, seed: int) -> Path:
    path = RESULTS / f"short_edits_rows{n_rows}_seed{seed}.parquet"
    if not path.exists():
        t = time.perf_counter()
        df, alike = generate(n_rows, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        df.write_parquet(tmp)
        path.with_suffix(".alike.json").write_text(json.dumps(alike, indent=1))
        tmp.replace(path)
        print(f"generated {df.height:,} rows in {time.perf_counter() - t:.0f} s: {shown(path)}")
    return path


def reach(df: pl.DataFrame) -> pl.DataFrame:
    """Per planted copy: how alike it is to its unique row, in characters (no spaces where the script has
    none) and in words: `char_ratio`, `char_distance`, `word_ratio`."""
    base = df.filter(pl.col("kind") == "base").select("group", pl.col("text").alias("source"))
    planted = df.filter(pl.col("kind") != "base").join(base, on="group")
    return with_alike(planted).select("row_id", "char_ratio", "char_distance", "word_ratio")


def evaluate(df: pl.DataFrame, rejected: pl.DataFrame) -> dict[str, object]:
    """Every row's representative is itself if kept, else the kept row its dup_of names. A planted copy is
    found when it has its unique row's representative; a row is lost when it is dropped as a duplicate of
    a row of another group (a unique row lost: `kind` base)."""
    rej = rejected.select("row_id", "dup_of", "drop_reason")
    rows = df.join(rej, on="row_id", how="left").with_columns(
        rep=pl.when(pl.col("drop_reason").is_null()).then(pl.col("row_id")).otherwise(pl.col("dup_of"))
    )
    group_of = rows.select(pl.col("row_id").alias("rep"), pl.col("group").alias("rep_group"))
    rows = rows.join(group_of, on="rep", how="left")
    base_rep = rows.filter(pl.col("kind") == "base").select("group", pl.col("rep").alias("base_rep"))
    planted = rows.filter(pl.col("kind") != "base").join(base_rep, on="group")
    planted = planted.with_columns(found=pl.col("rep") == pl.col("base_rep")).join(reach(df), on="row_id")
    wrong = rows.filter(pl.col("dup_of").is_not_null() & (pl.col("rep_group") != pl.col("group")))
    by_cell = (
        planted.group_by("lang", "length", "edits")
        .agg(
            planted=pl.len(),
            found=pl.col("found").sum(),
            beyond=(pl.col("char_ratio") < THRESHOLD).sum(),
            found_beyond=(pl.col("found") & (pl.col("char_ratio") < THRESHOLD)).sum(),
            min_char_ratio=pl.col("char_ratio").min(),
            chars=pl.col("text").str.len_chars().mean(),
        )
        .sort("lang", "length", "edits")
    )
    by_script = (
        planted.group_by("lang")
        .agg(
            planted=pl.len(),
            found=pl.col("found").sum(),
            beyond=(pl.col("char_ratio") < THRESHOLD).sum(),
            found_within=(pl.col("found") & (pl.col("char_ratio") >= THRESHOLD)).sum(),
        )
        .join(
            wrong.group_by("lang").agg(
                lost_unique=(pl.col("kind") == "base").sum(), lost_planted=(pl.col("kind") != "base").sum()
            ),
            on="lang",
            how="left",
        )
        .join(
            rows.group_by("lang").agg(
                rule_drops=(pl.col("drop_reason").is_not_null() & pl.col("dup_of").is_null()).sum()
            ),
            on="lang",
        )
        .fill_null(0)
    )
    misses = planted.filter(~pl.col("found")).join(
        df.filter(pl.col("kind") == "base").select("group", pl.col("text").alias("source")), on="group"
    )
    joined = df.select(pl.col("row_id").alias("dup_of"), pl.col("text").alias("source"))
    lost = wrong.join(joined, on="dup_of").with_columns(edits=pl.col("edits").clip(lower_bound=0))
    return {"by_cell": by_cell, "by_script": by_script, "misses": misses, "lost": with_alike(lost)}


def with_alike(pairs: pl.DataFrame) -> pl.DataFrame:
    """`pairs` (columns text, source, lang) with how alike their texts are (see `reach`)."""
    spaced = [SCRIPTS[c].spaced for c in pairs["lang"].to_list()]
    a = [plain(t, s) for t, s in zip(pairs["text"].to_list(), spaced, strict=True)]
    b = [plain(t, s) for t, s in zip(pairs["source"].to_list(), spaced, strict=True)]
    return pairs.with_columns(
        char_ratio=process.cpdist(a, b, scorer=fuzz.ratio, workers=-1),
        char_distance=process.cpdist(a, b, scorer=Levenshtein.distance, workers=-1),
        word_ratio=process.cpdist([word_codes(x) for x in a], [word_codes(x) for x in b], scorer=fuzz.ratio),
    )


def run_child(path: Path, out: Path, shards: int) -> dict[str, object]:
    from personaloom.stages.filter.file import filter_parquet

    t = time.perf_counter()
    outcome = filter_parquet(path, column="text", out=out, id_column="row_id", shards=shards or None)
    res: dict[str, object] = {"filter_wall_s": round(time.perf_counter() - t, 2), "counts": outcome.counts}
    res["stats"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in outcome.stats.items()}
    res["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return res


def measure(n_rows: int, args: argparse.Namespace) -> None:
    path = dataset(n_rows, args.seed)
    out = RESULTS / (f"short-edits-filtered-{n_rows}" + (f"-{args.shards}shards" if args.shards else ""))
    cmd = [sys.executable, __file__, "--child", "--rows", str(n_rows), "--seed", str(args.seed)]
    cmd += ["--shards", str(args.shards)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(os.waitstatus_to_exitcode(status))
    res = json.loads(stdout.strip().splitlines()[-1])
    df = pl.read_parquet(path)
    q = evaluate(df, pl.read_parquet(out / "rejections.parquet"))
    s = res["stats"]
    near = {k.removeprefix("near_"): v for k, v in s.items()}  # the in-memory filter prefixes its stats
    phases = " ".join(
        f"{k.removesuffix('_s')} {v:.1f}"
        for k, v in near.items()
        if k.endswith("_s") and k not in ("total_s", "rows_per_s")
    )
    print(
        f"\n== {df.height:,} rows ({shown(path)}), {args.shards or 'no'} shards\n"
        f"filter wall: {res['filter_wall_s']} s (process {time.perf_counter() - t:.1f} s; CPU user+sys "
        f"{usage.ru_utime + usage.ru_stime:.1f} s), peak RSS {usage.ru_maxrss / 1024:,.0f} MB\n"
        f"phases: {phases}\n"
        f"candidate pairs {near.get('candidate_pairs', 0):,}, checked for edited characters "
        f"{near.get('edit_checked_pairs', 0):,}, verified {near.get('verified_pairs', 0):,}\n"
        f"same as: personaloom filter {shown(path)} --column text --id-column row_id --out {shown(out)}"
        + (f" --shards {args.shards}" if args.shards else "")
    )
    print_cells(q["by_cell"], json.loads(path.with_suffix(".alike.json").read_text()))
    print_scripts(q["by_script"])
    for name in ("misses", "lost") if args.misses else ():
        for (code,), part in q[name].group_by("lang", maintain_order=True):
            for r in part.head(args.misses).iter_rows(named=True):
                print(
                    f"{name} {code} {r['length']} words, {r['edits']} edits: {r['char_ratio']:.1f}% alike in "
                    f"characters, {r['char_distance']:.0f} apart, {r['word_ratio']:.1f}% alike in words"
                    f"\n  {r['source']}\n  {r['text']}"
                )


def print_cells(cells: pl.DataFrame, alike: dict[str, dict[str, float]]) -> None:
    print(
        "\nfound/planted per script x length x edited characters (0: an exact copy); b: of them, less than "
        f"{THRESHOLD:g}% alike to their row in characters (beyond the threshold of any rule)"
    )
    head = f"{'script':<7}{'words':>6}{'chars':>7}" + "".join(f"{f'{e} edits':>14}" for e in EDITS)
    print(head + "   unique pairs of a template >= 86% alike in characters")
    for (code, length), part in cells.group_by("lang", "length", maintain_order=True):
        line = f"{code:<7}{length:>6}{part['chars'].mean():>7.0f}"
        for r in part.iter_rows(named=True):
            cell = f"{r['found']}/{r['planted']}" + (f" b{r['beyond']}" if r["beyond"] else "")
            line += f"{cell:>14}"
        a = alike[f"{code}/{length}"]
        ge = int(a["char_ratio_ge_threshold"])
        print(f"{line}   {ge:>7,} of {int(a['pairs']):,} (most alike {a['max_char_ratio']:.0f}%)")


def print_scripts(scripts: pl.DataFrame) -> None:
    print(
        f"\n{'script':<7}{'planted':>9}{'found':>8}{'recall':>9}{'beyond':>8}{'recall within':>15}"
        f"{'uniques lost':>14}{'copies misjoined':>18}{'rule drops':>12}"
    )
    keys = ("planted", "found", "beyond", "found_within", "lost_unique", "lost_planted", "rule_drops")
    total = {k: 0 for k in keys}
    rows = [scripts.filter(pl.col("lang") == code).row(0, named=True) for code in SCRIPTS]
    for r in [*rows, {"lang": "all", **total}]:
        if r["lang"] == "all":
            r.update(total)
        else:
            total = {k: total[k] + r[k] for k in keys}
        within = r["found_within"] / max(r["planted"] - r["beyond"], 1)
        print(
            f"{r['lang']:<7}{r['planted']:>9,}{r['found']:>8,}{r['found'] / max(r['planted'], 1):>9.4f}"
            f"{r['beyond']:>8}{within:>15.4f}{r['lost_unique']:>14}{r['lost_planted']:>18}{r['rule_drops']:>12}"
        )


def shown(path: Path) -> Path:
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=None, help="one size (default: 30,000 and 300,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shards", type=int, default=0, help="filter in this many shards (--shards)")
    parser.add_argument("--misses", type=int, default=0, help="print this many missed pairs per script")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path = RESULTS / f"short_edits_rows{args.rows}_seed{args.seed}.parquet"
        out = RESULTS / (
            f"short-edits-filtered-{args.rows}" + (f"-{args.shards}shards" if args.shards else "")
        )
        print(json.dumps(run_child(path, out, args.shards)))
        return
    print("command:", " ".join([".venv/bin/python", *sys.argv]))
    for n in [args.rows] if args.rows else [30_000, 300_000]:
        measure(n, args)


if __name__ == "__main__":
    main()
