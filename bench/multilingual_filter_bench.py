"""Stage 5's filter on Chinese, Japanese, Thai, Arabic, Russian and Hindi text with planted near-duplicates.

Run (from the repo root):
    .venv/bin/python bench/multilingual_filter_bench.py                 # 1,000 unique rows per script
    .venv/bin/python bench/multilingual_filter_bench.py --rows 1300 --seed 11

What it measures, per script: recall of the planted duplicates (exact and near), unique rows wrongly
dropped as a duplicate of another row, and rows dropped by a rule (length, repetition, refusal,
truncation, wrong_language), through the same function `personaloom filter` runs, with each row's
intended language in a column (`--lang-column lang`). The Parquet it filters is kept, and the
equivalent `personaloom filter` command is printed.

The text is written for this benchmark only (nothing in the filter was tuned on it): for each language,
eight everyday requests to an assistant (buy, compare, repair, travel, gift, sell) with five slots — a
person's name, a city, a product (adjective x noun), a day and time of day, an amount. Slot values come
from a Reed-Solomon code over GF(37) (as in bench/filter_bench.py): any two unique rows share at most one
of their five slot values, so no unique row is a small edit of another, and the ground truth is exact.
Planted near-duplicates are small edits of a unique row: 1-3 characters substituted, inserted or deleted
(Chinese, Japanese, Thai) or 1-2 words (Arabic, Russian, Hindi), spaces inserted, punctuation changed,
Arabic vowel marks added, Russian case changed; exact copies are planted too.

Its rows are long (about 30-40 words in Arabic, Russian and Hindi, 60-160 characters in Chinese, Japanese
and Thai) and its edits in scripts with spaces whole words: copies of SHORT texts with characters edited, in
every script, are bench/short_edits_bench.py's (where the filter before issue 30 found 0.6 of them in
scripts with spaces, while this bench said 1.0000).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rapidfuzz import fuzz, process

P = 37  # slot values per slot (prime): P * P codewords, so at most 1,369 unique rows per script
# Unique rows are under this rapidfuzz ratio (0-100; characters, or words in spaced scripts) to every other
# unique row of their script;
# the filter's near-duplicate threshold is 86 and a planted duplicate is 88 or more alike.
UNIQUE_MARGIN = 75.0
SLOTS = ("name", "city", "product", "time", "number")


@dataclass(frozen=True)
class Language:
    code: str
    spaced: bool  # words separated by spaces (edits are word edits) or not (character edits)
    # a request: opener + intro ({name}, {city}) + request ({product}, {time}) + limit ({number}) + question
    # + closer, one of each drawn per row
    intros: tuple[str, ...]
    requests: tuple[str, ...]
    limits: tuple[str, ...]
    questions: tuple[str, ...]
    openers: tuple[str, ...]  # "" = none
    closers: tuple[str, ...]
    names: tuple[str, ...]
    cities: tuple[str, ...]
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    days: tuple[str, ...]
    parts: tuple[str, ...]
    product: str  # format of a product from {adj} and {noun}
    time: str  # format of a time from {day} and {part}
    number: int  # the first amount; amounts step by a tenth of it
    pool: tuple[str, ...]  # characters or words an edit inserts or substitutes


def _w(text: str) -> tuple[str, ...]:
    return tuple(text.split())


LANGUAGES: dict[str, Language] = {
    "zh": Language(
        code="zh",
        spaced=False,
        intros=(
            "我是{name}，住在{city}。",
            "{name}这里，我现在在{city}工作。",
            "我叫{name}，最近刚搬到{city}。",
            "我是{name}，这周在{city}出差。",
            "我叫{name}，老家在{city}。",
            "我是住在{city}的{name}。",
        ),
        requests=(
            "我想{time}去买{product}，",
            "{time}我要去取{product}，",
            "想给父母买{product}当礼物，最好{time}之前送到，",
            "家里的{product}坏了，{time}想找人修一下，",
            "打算{time}把{product}放到二手平台上卖掉，",
            "想比较几家店的{product}，{time}有空去看看，",
        ),
        limits=(
            "预算大概{number}元。",
            "最多只能花{number}元。",
            "价格希望不超过{number}元。",
            "手头大概有{number}元。",
            "{number}元以内最好。",
            "心理价位是{number}元左右。",
        ),
        questions=(
            "你有什么推荐吗？",
            "能帮我列几个选择吗？",
            "应该怎么安排比较好？",
            "有哪些需要注意的地方？",
            "你觉得这样可行吗？",
            "帮我写个简单的计划吧。",
        ),
        openers=("", "你好，", "您好，", "打扰一下，", "早上好，", "请问，"),
        closers=("", "谢谢！", "多谢啦。", "麻烦你了。", "先谢谢你！", "辛苦了。"),
        names=_w(
            "王磊 李娜 张伟 刘洋 陈静 杨帆 黄敏 赵军 吴倩 周涛 徐丽 孙浩 马超 朱婷 胡斌 郭晶 何勇 高峰 "
            "林芳 罗杰 "
            "郑爽 梁宇 谢丹 宋佳 唐亮 韩雪 冯刚 邓颖 曹阳 彭辉 曾琳 肖鹏 田甜 董明 潘悦 袁凯 蔡萍 蒋波 "
            "于慧 杜鑫"
        ),
        cities=_w(
            "北京 上海 广州 深圳 成都 杭州 武汉 西安 南京 重庆 天津 苏州 长沙 郑州 青岛 沈阳 大连 厦门 "
            "昆明 哈尔滨 "
            "济南 福州 合肥 南昌 贵阳 南宁 兰州 太原 石家庄 呼和浩特 乌鲁木齐 拉萨 海口 三亚 桂林 丽江 "
            "宁波 无锡"
        ),
        adjectives=_w("便宜的 轻便的 二手的 防水的 大容量的 静音的"),
        nouns=_w("笔记本电脑 电饭煲 自行车 双肩包 吸尘器 蓝牙耳机 空气净化器"),
        days=_w("周一 周二 周三 周四 周五 周六 周日"),
        parts=_w("早上 上午 中午 下午 傍晚 晚上"),
        product="一台{adj}{noun}",
        time="{day}{part}",
        number=300,
        pool=tuple(
            "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天"
            "去能对小多"
        ),
    ),
    "ja": Language(
        code="ja",
        spaced=False,
        intros=(
            "{name}です。{city}に住んでいます。",
            "{city}在住の{name}と申します。",
            "{name}です。今週は{city}に出張中です。",
            "最近{city}に引っ越した{name}です。",
            "{name}と言います。実家が{city}にあります。",
            "{city}で働いている{name}です。",
        ),
        requests=(
            "{time}に{product}を買いに行きたいのですが、",
            "{time}に{product}を受け取りに行く予定で、",
            "両親に{product}を贈りたくて、{time}までに届けたいのですが、",
            "{product}が壊れたので、{time}に修理に出したいのですが、",
            "{time}に{product}をフリマアプリで売るつもりで、",
            "いくつかの店の{product}を比べたくて、{time}なら時間があり、",
        ),
        limits=(
            "予算は{number}円くらいです。",
            "使えるのは{number}円までです。",
            "{number}円以内に抑えたいです。",
            "手元には{number}円ほどあります。",
            "{number}円前後で考えています。",
            "上限は{number}円です。",
        ),
        questions=(
            "おすすめはありますか？",
            "いくつか候補を挙げてもらえますか？",
            "どう進めるのがいいでしょうか？",
            "気をつけることはありますか？",
            "この計画で大丈夫でしょうか？",
            "簡単な段取りを作ってください。",
        ),
        openers=(
            "",
            "すみません、",
            "お疲れさまです。",
            "おはようございます。",
            "ちょっと質問です。",
            "急ぎではないのですが、",
        ),
        closers=(
            "",
            "よろしくお願いします。",
            "ありがとうございます。",
            "助かります！",
            "お手数ですがお願いします。",
            "返事を待っています。",
        ),
        names=_w(
            "佐藤健 鈴木愛 高橋翔 田中花子 渡辺誠 伊藤舞 山本大輔 中村彩 小林拓海 加藤恵 吉田蓮 山田優子 "
            "佐々木陸 "
            "山口美咲 松本浩 井上七海 木村直樹 林さくら 清水亮 山崎遥 森健太 阿部結衣 池田聡 橋本茜 石川翼 "
            "山下理沙 "
            "小川哲也 石井真理 長谷川湊 後藤明日香 岡田和樹 近藤芽依 前田雄介 藤田智子 遠藤悠斗 青木凛 "
            "坂本一郎 比嘉渚"
        ),
        cities=_w(
            "東京 大阪 京都 名古屋 横浜 札幌 福岡 神戸 仙台 広島 金沢 奈良 那覇 長崎 熊本 鹿児島 静岡 浜松 "
            "岡山 松山 "
            "高松 新潟 長野 函館 旭川 青森 盛岡 秋田 山形 福島 宇都宮 前橋 甲府 富山 岐阜 和歌山 鳥取 松江"
        ),
        adjectives=_w("安い 軽い 中古の 防水の 大容量の 静かな"),
        nouns=_w("ノートパソコン 炊飯器 自転車 リュック 掃除機 イヤホン 空気清浄機"),
        days=_w("月曜日 火曜日 水曜日 木曜日 金曜日 土曜日 日曜日"),
        parts=_w("朝 午前 昼 午後 夕方 夜"),
        product="{adj}{noun}",
        time="{day}の{part}",
        number=8000,
        pool=tuple(
            "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんア"
            "イウエオカキクケコ"
        ),
    ),
    "th": Language(
        code="th",
        spaced=False,
        intros=(
            "ผมชื่อ{name} อยู่ที่{city}ครับ ",
            "ดิฉัน{name}ค่ะ ตอนนี้ทำงานอยู่ที่{city} ",
            "{name}เองนะ เพิ่งย้ายมาอยู่{city} ",
            "ผม{name} สัปดาห์นี้มาทำงานที่{city} ",
            "ดิฉันชื่อ{name} บ้านเกิดอยู่ที่{city} ",
            "{name}ค่ะ อาศัยอยู่ใน{city} ",
        ),
        requests=(
            "อยากไปซื้อ{product}{time} ",
            "{time}ต้องไปรับ{product} ",
            "อยากซื้อ{product}ให้พ่อแม่ ต้องส่งถึงก่อน{time} ",
            "{product}ที่บ้านเสีย อยากเอาไปซ่อม{time} ",
            "ตั้งใจจะขาย{product}ทางออนไลน์{time} ",
            "อยากเทียบราคา{product}หลายร้าน ว่าง{time} ",
        ),
        limits=(
            "งบประมาณราว{number}บาท ",
            "มีเงินไม่เกิน{number}บาท ",
            "อยากให้ราคาไม่เกิน{number}บาท ",
            "ตอนนี้มีอยู่{number}บาท ",
            "ตั้งไว้ประมาณ{number}บาท ",
            "จ่ายได้สูงสุด{number}บาท ",
        ),
        questions=(
            "มีอะไรแนะนำไหมคะ",
            "ช่วยแนะนำตัวเลือกให้หน่อยครับ",
            "ควรวางแผนยังไงดีคะ",
            "มีอะไรต้องระวังบ้างไหมครับ",
            "แบบนี้เป็นไปได้ไหมคะ",
            "ช่วยเขียนแผนง่ายๆ ให้หน่อยครับ",
        ),
        openers=("", "ขอถามหน่อยนะ ", "รบกวนหน่อยค่ะ ", "ขอโทษนะครับ ", "อรุณสวัสดิ์ค่ะ ", "มีเรื่องอยากปรึกษา "),
        closers=("", " ขอบคุณมากครับ", " ขอบคุณล่วงหน้าค่ะ", " รอคำตอบนะคะ", " ขอบใจมากนะ", " ช่วยหน่อยนะครับ"),
        names=_w(
            "สมชาย สมหญิง มาลี ศิริพร กัญญา ณัฐธิดา สุดา วนิดา รัตนา ชนิดา พรทิพย์ จินตนา นงลักษณ์ กนกวรรณ "
            "อารี ธิดา "
            "ปราณี สุภาพร สมศักดิ์ ประเสริฐ สุชาติ วิชัย สมบัติ สุรชัย อนันต์ ธนากร กิตติศักดิ์ ชัยวัฒน์ "
            "ณรงค์ พิชัย "
            "บุญมี ศักดา ตะวัน ณัฐพงศ์ อภิชาติ วิรัตน์ ธวัชชัย สมเกียรติ"
        ),
        cities=_w(
            "กรุงเทพ เชียงใหม่ ภูเก็ต ขอนแก่น อุดรธานี นครราชสีมา หาดใหญ่ พัทยา เชียงราย อยุธยา สุโขทัย "
            "กาญจนบุรี "
            "หัวหิน ระยอง ชลบุรี นครปฐม ลำปาง น่าน แพร่ พิษณุโลก นครสวรรค์ อุบลราชธานี สุราษฎร์ธานี กระบี่ "
            "ตรัง "
            "สงขลา ปัตตานี ยะลา เพชรบุรี ราชบุรี จันทบุรี ตราด ลพบุรี สระบุรี ชุมพร แม่ฮ่องสอน บุรีรัมย์"
        ),
        adjectives=_w("ราคาถูก น้ำหนักเบา มือสอง กันน้ำ ความจุสูง เสียงเงียบ"),
        nouns=_w("โน้ตบุ๊ก หม้อหุงข้าว จักรยาน กระเป๋าเป้ เครื่องดูดฝุ่น หูฟัง เครื่องฟอกอากาศ"),
        days=_w("วันจันทร์ วันอังคาร วันพุธ วันพฤหัสบดี วันศุกร์ วันเสาร์ วันอาทิตย์"),
        parts=_w("ตอนเช้า ตอนสาย ตอนเที่ยง ตอนบ่าย ตอนเย็น ตอนค่ำ"),
        product="{noun}{adj}",
        time="{day}{part}",
        number=1500,
        pool=tuple("กขคงจฉชซดตถทนบปผพฟมยรลวสหอฮะาำเแโใไ"),
    ),
    "ar": Language(
        code="ar",
        spaced=True,
        intros=(
            "اسمي {name} وأعيش في {city}. ",
            "أنا {name} وأعمل حاليا في {city}. ",
            "معك {name}، انتقلت مؤخرا إلى {city}. ",
            "أنا {name} وفي رحلة عمل إلى {city} هذا الأسبوع. ",
            "اسمي {name} وأصلي من {city}. ",
            "أنا {name} من سكان {city}. ",
        ),
        requests=(
            "أريد شراء {product} {time}، ",
            "سأذهب لاستلام {product} {time}، ",
            "أريد أن أهدي والدي {product} ويجب أن يصل قبل {time}، ",
            "تعطل عندي {product} وأريد إصلاحه {time}، ",
            "أنوي بيع {product} عبر الإنترنت {time}، ",
            "أريد مقارنة أسعار {product} في عدة محلات {time}، ",
        ),
        limits=(
            "وميزانيتي حوالي {number} جنيه. ",
            "ولا أستطيع دفع أكثر من {number} جنيه. ",
            "وأفضل ألا يتجاوز السعر {number} جنيه. ",
            "ومعي الآن {number} جنيه تقريبا. ",
            "وحددت مبلغ {number} جنيه لذلك. ",
            "والحد الأقصى عندي {number} جنيه. ",
        ),
        questions=(
            "هل لديك أي اقتراحات؟",
            "هل يمكنك أن تعطيني بعض الخيارات؟",
            "كيف أرتب ذلك بأفضل طريقة؟",
            "ما الأمور التي يجب أن أنتبه لها؟",
            "هل تعتقد أن هذا ممكن؟",
            "اكتب لي خطة بسيطة من فضلك.",
        ),
        openers=("", "صباح الخير، ", "مساء الخير، ", "لو سمحت، ", "عندي سؤال: ", "أرجو مساعدتك: "),
        closers=("", " شكرا جزيلا.", " وشكرا مقدما.", " أنتظر ردك.", " جزاك الله خيرا.", " ممتن لمساعدتك."),
        names=_w(
            "فاطمة مريم سلمى ياسمين حبيبة فريدة آية رنا دينا هبة منى نهى أميرة شيماء نسمة هدى سميرة زينب "
            "ليلى "
            "محمد أحمد محمود مصطفى يوسف عمر علي حسن حسين إبراهيم خالد طارق عمرو كريم شريف هاني وليد عادل"
        ),
        cities=(
            "القاهرة",
            "الإسكندرية",
            "الجيزة",
            "الأقصر",
            "أسوان",
            "بورسعيد",
            "السويس",
            "الإسماعيلية",
            "المنصورة",
            "طنطا",
            "الزقازيق",
            "دمياط",
            "المنيا",
            "أسيوط",
            "سوهاج",
            "قنا",
            "الفيوم",
            "بني سويف",
            "الغردقة",
            "شرم الشيخ",
            "مرسى مطروح",
            "دهب",
            "العريش",
            "سيوة",
            "بنها",
            "كفر الشيخ",
            "دمنهور",
            "الرياض",
            "جدة",
            "دبي",
            "أبوظبي",
            "الدوحة",
            "عمان",
            "بيروت",
            "تونس",
            "الرباط",
            "مسقط",
            "الكويت",
        ),
        adjectives=_w("رخيص خفيف مستعمل جديد صغير هادئ"),
        nouns=_w("هاتف حاسوب مكيف تلفاز كرسي مكتب خلاط"),
        days=_w("الاثنين الثلاثاء الأربعاء الخميس الجمعة السبت الأحد"),
        parts=("صباح", "ظهر", "عصر", "مساء", "ليلة", "فجر"),
        product="{noun} {adj}",
        time="{part} يوم {day}",
        number=900,
        pool=_w("جدا كذلك أيضا فعلا بسرعة اليوم هنا الآن ربما طبعا تقريبا غدا"),
    ),
    "ru": Language(
        code="ru",
        spaced=True,
        intros=(
            "Меня зовут {name}, я живу в городе {city}. ",
            "Это {name}, сейчас работаю в городе {city}. ",
            "Я {name}, недавно переехал в город {city}. ",
            "Меня зовут {name}, на этой неделе я в командировке, город {city}. ",
            "Я {name}, родом из города {city}. ",
            "Пишет {name} из города {city}. ",
        ),
        requests=(
            "Хочу купить {product} {time}, ",
            "Мне нужно забрать {product} {time}, ",
            "Хочу подарить родителям {product}, доставить нужно {time}, ",
            "У меня сломался {product}, хочу отдать его в ремонт {time}, ",
            "Собираюсь продать {product} через интернет {time}, ",
            "Хочу сравнить цены на {product} в нескольких магазинах {time}, ",
        ),
        limits=(
            "бюджет примерно {number} рублей. ",
            "больше {number} рублей потратить не могу. ",
            "хотелось бы уложиться в {number} рублей. ",
            "у меня сейчас около {number} рублей. ",
            "рассчитываю примерно на {number} рублей. ",
            "максимум {number} рублей. ",
        ),
        questions=(
            "Что посоветуете?",
            "Можете предложить несколько вариантов?",
            "Как лучше всё организовать?",
            "На что стоит обратить внимание?",
            "Как думаете, это реально?",
            "Напишите, пожалуйста, простой план.",
        ),
        openers=(
            "",
            "Добрый вечер! ",
            "Привет! ",
            "Извините за беспокойство. ",
            "Вопрос такой. ",
            "Нужна помощь. ",
        ),
        closers=(
            "",
            " Спасибо!",
            " Заранее благодарю.",
            " Буду ждать ответа.",
            " Очень выручите.",
            " Спасибо за помощь.",
        ),
        names=_w(
            "Александр Дмитрий Максим Сергей Андрей Алексей Артём Илья Кирилл Михаил Никита Матвей Роман "
            "Егор "
            "Иван Владимир Павел Николай Анна Мария Елена Ольга Наталья Татьяна Ирина Светлана Екатерина "
            "Анастасия Дарья Юлия Ксения Полина Виктория Алина Вера Галина Людмила"
        ),
        cities=_w(
            "Москва Санкт-Петербург Казань Новосибирск Екатеринбург Самара Омск Ростов-на-Дону Уфа "
            "Красноярск "
            "Пермь Воронеж Волгоград Краснодар Саратов Тюмень Тольятти Ижевск Барнаул Ульяновск Иркутск "
            "Хабаровск Ярославль Владивосток Махачкала Томск Оренбург Кемерово Рязань Астрахань Пенза Липецк "
            "Калининград Тула Киров Сочи Мурманск Архангельск"
        ),
        adjectives=_w("недорогой лёгкий подержанный водонепроницаемый компактный тихий"),
        nouns=_w("ноутбук велосипед рюкзак пылесос холодильник телевизор чайник"),
        days=(
            "в понедельник",
            "во вторник",
            "в среду",
            "в четверг",
            "в пятницу",
            "в субботу",
            "в воскресенье",
        ),
        parts=("утром", "днём", "вечером", "ночью", "рано утром", "поздно вечером"),
        product="{adj} {noun}",
        time="{day} {part}",
        number=12000,
        pool=_w("очень также просто сейчас сегодня завтра обязательно примерно срочно действительно ещё уже"),
    ),
    "hi": Language(
        code="hi",
        spaced=True,
        intros=(
            "मेरा नाम {name} है और मैं {city} में रहता हूँ। ",
            "मैं {name} हूँ, आजकल {city} में काम करती हूँ। ",
            "मैं {name} बोल रहा हूँ, हाल ही में {city} आया हूँ। ",
            "मैं {name} हूँ और इस हफ़्ते काम से {city} में हूँ। ",
            "मेरा नाम {name} है, मेरा घर {city} में है। ",
            "{city} से {name} लिख रही हूँ। ",
        ),
        requests=(
            "मुझे {time} एक {product} खरीदना है, ",
            "मुझे {time} एक {product} लेने जाना है, ",
            "मैं माता-पिता को एक {product} देना चाहता हूँ जो {time} तक पहुँच जाए, ",
            "मेरा {product} खराब हो गया है और मैं उसे {time} ठीक करवाना चाहती हूँ, ",
            "मैं अपना {product} {time} ऑनलाइन बेचना चाहता हूँ, ",
            "मैं कई दुकानों पर मिलने वाला {product} देखना चाहती हूँ, {time} मेरे पास समय है, ",
        ),
        limits=(
            "मेरा बजट लगभग {number} रुपये है। ",
            "मैं {number} रुपये से ज़्यादा खर्च नहीं कर सकता। ",
            "कीमत {number} रुपये से कम हो तो अच्छा। ",
            "मेरे पास अभी करीब {number} रुपये हैं। ",
            "मैंने इसके लिए {number} रुपये रखे हैं। ",
            "ज़्यादा से ज़्यादा {number} रुपये लगें। ",
        ),
        questions=(
            "आप क्या सुझाव देंगे?",
            "कुछ विकल्प बता सकते हैं?",
            "इसे कैसे करना सबसे अच्छा होगा?",
            "किन बातों का ध्यान रखना चाहिए?",
            "क्या यह मुमकिन है?",
            "कृपया एक आसान योजना लिख दीजिए।",
        ),
        openers=("", "सुप्रभात! ", "एक सवाल है। ", "माफ़ कीजिए, ", "ज़रा मदद कीजिए। ", "सुनिए, "),
        closers=(
            "",
            " धन्यवाद!",
            " पहले से शुक्रिया।",
            " जवाब का इंतज़ार रहेगा।",
            " बहुत मेहरबानी होगी।",
            " आपकी मदद चाहिए।",
        ),
        names=_w(
            "राहुल अमित सुनील विकास अजय रोहित संजय अनिल विजय मनोज राजेश सुरेश दीपक अर्जुन आदित्य करण निखिल "
            "प्रिया पूजा नेहा अंजलि सुनीता कविता रेखा मीना सीमा आरती दिव्या स्नेहा श्रुति कोमल पायल रिया ईशा "
            "तनवी साक्षी गौरव"
        ),
        cities=_w(
            "दिल्ली मुंबई कोलकाता चेन्नई बेंगलुरु हैदराबाद पुणे अहमदाबाद जयपुर लखनऊ कानपुर नागपुर इंदौर "
            "भोपाल "
            "पटना वाराणसी आगरा अमृतसर चंडीगढ़ देहरादून शिमला ऋषिकेश उदयपुर जोधपुर सूरत वडोदरा नासिक गोवा "
            "कोच्चि मैसूर रांची गुवाहाटी भुवनेश्वर रायपुर ग्वालियर मेरठ प्रयागराज"
        ),
        adjectives=_w("सस्ता हल्का सेकंड-हैंड नया छोटा बढ़िया"),
        nouns=_w("लैपटॉप फ़ोन पंखा कूलर फ्रिज मिक्सर प्रिंटर"),
        days=_w("सोमवार मंगलवार बुधवार गुरुवार शुक्रवार शनिवार रविवार"),
        parts=("सुबह", "दोपहर", "शाम", "रात", "तड़के", "देर रात"),
        product="{adj} {noun}",
        time="{day} {part}",
        number=5000,
        pool=_w("भी अभी बहुत जल्दी आज कल ज़रूर शायद सच में लगभग फिर वहीं"),
    ),
}
NEAR_KINDS = ("edit1", "edit2", "edit3", "edit1+space", "edit2+punct", "space", "punct", "marks")
# Arabic short vowels (fatha, damma, kasra, sukun, shadda), which writers may add or leave out
_TASHKEEL = "\u064e\u064f\u0650\u0652\u0651"


def slot_values(lang: Language, rng: np.random.Generator) -> dict[str, list[str]]:
    """P values per slot, shuffled: names, cities, adjective x noun products, day x part times, amounts."""
    products = [lang.product.format(adj=a, noun=n) for a in lang.adjectives for n in lang.nouns]
    times = [lang.time.format(day=d, part=p) for d in lang.days for p in lang.parts]
    amounts = [str(lang.number + (lang.number // 10) * i) for i in range(P)]
    out = {
        "name": list(lang.names),
        "city": list(lang.cities),
        "product": products,
        "time": times,
        "number": amounts,
    }
    for slot, values in out.items():
        if len(set(values)) < P:
            raise ValueError(f"{lang.code}: slot {slot} has {len(set(values))} distinct values, needs {P}")
        out[slot] = [values[int(i)] for i in rng.permutation(len(values))[:P]]
    return out


def codeword(j: int) -> list[int]:
    """Slot values of unique row j: m0 + m1*x at x = 1..5 over GF(P), (m1, m0) = divmod(j, P). Two
    distinct degree-1 polynomials agree on at most one point: two rows share at most one slot value."""
    m1, m0 = divmod(j, P)
    return [(m0 + m1 * x) % P for x in range(1, len(SLOTS) + 1)]


_WORD_CODES: dict[str, str] = {}


def _plain(text: str, spaced: bool) -> str:
    """What two texts are compared on: characters (case, punctuation and spaces removed) where the
    script has no spaces, else words (one code point per distinct word, as the filter scores them)."""
    kept = "".join(
        ch for ch in text.lower() if ch.isalnum() or ch.isspace() or unicodedata.category(ch)[0] == "M"
    )
    if not spaced:
        return "".join(kept.split())
    return "".join(_WORD_CODES.setdefault(w, chr(0x10000 + len(_WORD_CODES))) for w in kept.split())


def unique_rows(lang: Language, n: int, rng: np.random.Generator) -> list[str]:
    """n rows, each under UNIQUE_MARGIN alike (rapidfuzz ratio, see `_plain`) to every other one."""
    if n > P * P:
        raise ValueError(f"at most {P * P} unique rows per script")
    values = slot_values(lang, rng)
    rows: list[str] = []
    plain: list[str] = []
    for j in rng.permutation(P * P):
        slots = {slot: values[slot][v] for slot, v in zip(SLOTS, codeword(int(j)), strict=True)}
        parts = (lang.openers, lang.intros, lang.requests, lang.limits, lang.questions, lang.closers)
        text = "".join(part[int(rng.integers(len(part)))] for part in parts).format(**slots).strip()
        key = _plain(text, lang.spaced)
        if process.extractOne(key, plain, scorer=fuzz.ratio, score_cutoff=UNIQUE_MARGIN) is None:
            rows.append(text)
            plain.append(key)
            if len(rows) == n:
                return rows
    raise ValueError(f"{lang.code}: only {len(rows)} rows are under {UNIQUE_MARGIN}% alike: ask for fewer")


def _edit_chars(text: str, n: int, lang: Language, rng: np.random.Generator) -> str:
    chars = list(text)
    for _ in range(n):
        at = int(rng.integers(1, max(len(chars) - 2, 2)))  # never the first or the last character
        op = int(rng.integers(3))
        new = lang.pool[int(rng.integers(len(lang.pool)))]
        if op == 0:
            chars[at] = new
        elif op == 1:
            chars.insert(at, new)
        else:
            del chars[at]
    return "".join(chars)


def _edit_words(text: str, n: int, lang: Language, rng: np.random.Generator) -> str:
    words = text.split(" ")
    for _ in range(n):
        at = int(rng.integers(1, max(len(words) - 1, 2)))  # never the first or the last word
        op = int(rng.integers(3))
        new = lang.pool[int(rng.integers(len(lang.pool)))]
        if op == 0:
            words[at] = new
        elif op == 1:
            words.insert(at, new)
        else:
            del words[at]
    return " ".join(words)


def _noise(text: str, kind: str, lang: Language, rng: np.random.Generator) -> str:
    if kind == "space":  # spaces where the script has none, or doubled where it has them
        if lang.spaced:
            return "  " + text.replace(" ", "   ", 3) + " \n"
        cut = {int(i) for i in rng.choice(np.arange(1, len(text) - 1), 3, replace=False)}
        return "".join(ch + (" " if i in cut else "") for i, ch in enumerate(text))
    if kind == "punct":  # punctuation dropped or changed
        table = str.maketrans(
            {"，": "", "、": "", "。": "！", "？": "?", ",": "", "،": "", ".": "!", "।": ""}
        )
        return text.translate(table)
    if lang.code == "ar":  # "marks": vowel marks on a few letters
        chars = list(text)
        for at in rng.choice(len(chars), 6, replace=False):
            if "\u0621" <= chars[int(at)] <= "\u064a":
                chars[int(at)] += _TASHKEEL[int(rng.integers(len(_TASHKEEL)))]
        return "".join(chars)
    if lang.code == "ru":  # "marks": the case of the text
        return text.upper() if rng.random() < 0.5 else text.lower()
    return text.replace("。", ".").replace("？", "?").replace("！", "!")  # full-width to half-width


def plant(text: str, kind: str, lang: Language, rng: np.random.Generator) -> str:
    if kind.startswith("edit"):
        n = int(kind[4])
        if lang.spaced:
            n = min(n, 2)  # a word is several characters: two word edits are already a larger change
        text = (_edit_words if lang.spaced else _edit_chars)(text, n, lang, rng)
        if "+" in kind:
            text = _noise(text, kind.split("+")[1], lang, rng)
        return text
    return _noise(text, kind, lang, rng)


def generate(
    rows_per_script: int, seed: int = 7, near_share: float = 0.08, exact_share: float = 0.02
) -> pl.DataFrame:
    """Rows of every script with ground truth: `group` = the unique row it was made from, `kind`."""
    rng = np.random.default_rng(seed)
    parts = []
    for code, lang in LANGUAGES.items():
        base = unique_rows(lang, rows_per_script, rng)
        texts, kinds, groups = list(base), ["base"] * len(base), list(range(len(base)))
        n_near, n_exact = int(len(base) * near_share), int(len(base) * exact_share)
        for src in rng.integers(len(base), size=n_near):
            kind = NEAR_KINDS[int(rng.integers(len(NEAR_KINDS)))]
            texts.append(plant(base[int(src)], kind, lang, rng))
            kinds.append(kind)
            groups.append(int(src))
        for src in rng.integers(len(base), size=n_exact):
            texts.append(base[int(src)])
            kinds.append("exact")
            groups.append(int(src))
        order = rng.permutation(len(texts))
        parts.append(
            pl.DataFrame(
                {
                    "text": [texts[i] for i in order],
                    "lang": [code] * len(texts),
                    "group": [f"{code}-{groups[i]}" for i in order],
                    "kind": [kinds[i] for i in order],
                }
            )
        )
    df = pl.concat(parts)
    return df.with_row_index("row_id").with_columns(pl.col("row_id").cast(pl.String))


def evaluate(df: pl.DataFrame, rejected: pl.DataFrame) -> dict[str, dict[str, object]]:
    """Per script: planted duplicates found (recall), unique rows wrongly dropped as a duplicate of a row
    of another group, and rows dropped by a rule (by reason, and how many of them were unique rows)."""
    group = dict(zip(df["row_id"].to_list(), df["group"].to_list(), strict=True))
    out: dict[str, dict[str, object]] = {}
    for code in LANGUAGES:
        mine = df.filter(pl.col("lang") == code)
        rej = rejected.filter(pl.col("lang") == code)
        dups = rej.filter(pl.col("dup_of").is_not_null())
        correct = np.array(
            [group[d] == g for d, g in zip(dups["dup_of"], dups["group"], strict=True)], dtype=bool
        )
        expected = mine.height - mine["group"].n_unique()
        rules = rej.filter(pl.col("dup_of").is_null())
        out[code] = {
            "rows": mine.height,
            "unique": mine["group"].n_unique(),
            "planted": expected,
            "found": int(correct.sum()),
            "recall": float(correct.sum()) / max(expected, 1),
            "wrong_dup_drops": int((~correct).sum()),
            "rule_drops": rules.height,
            "rule_drops_of_unique_rows": rules.filter(pl.col("kind") == "base").height,
            "rule_reasons": dict(rules.group_by("drop_reason").len().sort("drop_reason").iter_rows()),
        }
    return out


def run(
    rows_per_script: int, seed: int, folder: Path
) -> tuple[dict[str, dict[str, object]], dict[str, float]]:
    """Generate, write `folder/texts.parquet`, filter it as `personaloom filter` does, evaluate."""
    from personaloom.stages.filter.file import filter_parquet

    df = generate(rows_per_script, seed)
    folder.mkdir(parents=True, exist_ok=True)
    df.write_parquet(folder / "texts.parquet")
    started = time.perf_counter()
    filter_parquet(
        folder / "texts.parquet",
        column="text",
        out=folder / "filtered",
        id_column="row_id",
        lang_column="lang",
    )
    seconds = time.perf_counter() - started
    rejected = pl.read_parquet(folder / "filtered" / "rejections.parquet")
    return evaluate(df, rejected), {"rows": float(df.height), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1000, help=f"unique rows per script (at most {P * P})")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="folder for the texts and the filter's output")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="multilingual-bench-"))
    results, timing = run(args.rows, args.seed, folder)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(
        f"same filter from the CLI: personaloom filter {folder / 'texts.parquet'} --column text "
        f"--id-column row_id --lang-column lang --out {folder / 'filtered'}"
    )
    print(f"{int(timing['rows']):,} rows filtered in {timing['seconds']:.1f} s\n")
    head = f"{'script':<8}{'rows':>7}{'unique':>8}{'planted':>9}{'found':>7}{'recall':>9}"
    print(head + f"{'wrong dup':>11}{'rule drops':>12}  (of unique rows)  reasons")
    for code, r in results.items():
        reasons = ", ".join(f"{k} {v}" for k, v in r["rule_reasons"].items()) or "-"  # type: ignore[union-attr]
        print(
            f"{code:<8}{r['rows']:>7,}{r['unique']:>8,}{r['planted']:>9,}{r['found']:>7,}{r['recall']:>9.4f}"
            f"{r['wrong_dup_drops']:>11}{r['rule_drops']:>12}  ({r['rule_drops_of_unique_rows']})  {reasons}"
        )


if __name__ == "__main__":
    main()
