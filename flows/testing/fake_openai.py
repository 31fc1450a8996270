"""A fake OpenAI-compatible HTTP server for tests and benchmarks.

It listens on a real loopback socket (stdlib ``ThreadingHTTPServer``, HTTP/1.1
keep-alive, one daemon thread per connection) so the real ``openai`` client,
its connection pool, timeouts and retries are exercised end to end.

Replies are deterministic functions of the request: a ``random.Random`` seeded
from sha256 of (model, messages, schema, request seed) drives every choice, so
the same request always gets the same answer and different requests get
visibly different answers. With a JSON schema in ``response_format`` the reply
validates against it (pydantic v2 ``model_json_schema()`` output); a JSON request without one that
names a declared call (the client's ``X-Personaloom-Call`` header) is answered from that call's response
model.

Scripted roles (`scripted`, and the roles built on it in this package) are keyed by the call a request
names in that header, never by its prompt's wording: a template can be reworded freely.

Usage::

    with FakeOpenAI(latency=0.01) as fake:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-test")

Standalone (for benchmarks in another process)::

    python -m personaloom.testing.fake_openai --host 127.0.0.1 --port 0 --latency 0.2
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import hashlib
import json
import math
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ValidationError

from personaloom.llm.calls import CALL_HEADER

__all__ = [
    "DEFAULT_FAULTS",
    "FakeOpenAI",
    "FakeStats",
    "Request",
    "SchemaFaker",
    "call_of",
    "main",
    "scripted",
]

DEFAULT_FAULTS: tuple[str, ...] = ("429", "500", "hang", "malformed", "length")
DEFAULT_MODELS: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "fake-model")
EMBEDDING_DIM = 64
MAX_RECORDED_REQUESTS = 10_000
MAX_DEPTH = 6  # deeper than this we pick the smallest valid value (recursive models)


def _words(text: str) -> list[str]:
    """Whitespace-split word list (keeps the vocabulary readable in source)."""
    return text.split()


# --------------------------------------------------------------------------- #
# Vocabulary: a few hundred everyday words arranged by part of speech so the
# generated phrases read like (odd but plausible) English rather than word salad.
# --------------------------------------------------------------------------- #
_ADJECTIVES = _words("""
quiet bright small large warm cold early late gentle busy calm careful clever
cheerful simple honest friendly patient curious steady modest practical local
rural urban sunny rainy windy narrow wide heavy light fresh old new young
familiar ordinary pleasant rough smooth soft loud distant nearby crowded empty
green blue golden wooden painted broken tidy messy quick slow lucky humble
generous serious playful thoughtful bold shy silver spare cozy faded sturdy
tiny spacious shiny dusty famous favorite weekly daily seasonal handmade
""")
_NOUNS = _words("""
kitchen garden library market station bakery river village neighbor teacher
nurse farmer driver student friend sister brother cousin grandmother child
bicycle window table chair notebook letter morning evening weekend holiday
breakfast dinner coffee bread apple orange basket bridge street corner park
school office workshop harbor beach forest hill valley city town house
apartment balcony train bus ticket umbrella jacket garden recipe song story
photograph camera map journey meeting project budget schedule habit hobby
festival concert museum painting lantern candle blanket pillow kettle mirror
ladder bucket shovel tomato onion sandwich soup cake pie cookie tea juice milk
cheese rice garage attic porch fence gate roof yard lawn pond lake island
mountain road highway airport hotel restaurant cafe pharmacy clinic hospital
bank shop bookstore playground stadium theater gallery newspaper magazine radio
phone laptop keyboard clock calendar wallet backpack suitcase sweater scarf
""")
_VERBS = _words("""
visits repairs paints cleans watches carries shares finds keeps builds bakes
plans reads writes remembers organizes follows crosses opens closes fixes
waters collects sorts describes explores studies checks prepares delivers
borrows returns decorates arranges measures records teaches counts
admires answers bookmarks carves chooses compares cooks draws feeds folds
gathers greets hangs lifts mends moves packs polishes recommends shelters
""")
_ADVERBS = _words("""
slowly quietly often rarely carefully happily early usually gently always
sometimes patiently eagerly calmly nearly
""")
_PREPOSITIONS = _words("near behind beside across under above around through before after")
_DETERMINERS = _words("the a every one another our their")
_CONNECTORS = _words("and while because although so after before")
# Words a phrase should not end on after a maxLength cut.
_DANGLING = {"the", "about", *_DETERMINERS, *_PREPOSITIONS, *_CONNECTORS, *_ADJECTIVES, *_ADVERBS}
_STOPWORDS = set(
    _words("""
about above after again against also among because been before being below between
both but could does doing down during each from further have having here hers
herself himself into itself just more most myself once only other ought ours over
same should some such than that their theirs them themselves then there these they
this those through under until very were what when where which while whom with
would your yours yourself please write give make tell return json using must
""")
)


# Everyday words of other languages: a prompt that says which language to write in ("Write the message
# in Japanese") gets its text in that language, so pipelines that check the language of what they get
# (language ID) see what a real model would write. Languages without a list get English: every language
# the seed tables give a persona has one, that lid.176 identifies (tests/test_fake_openai.py).
_LEXICONS: dict[str, tuple[tuple[str, ...], str]] = {  # language name → (words, joiner)
    "Chinese": (
        _words(
            "今天 明天 我们 需要 一个 计划 时间 朋友 工作 家里 城市 附近 推荐 简单 方便 价格 比较 准备 周末 "
            "旅行 学习 安排 问题 办法 可以 帮忙 超市 晚饭 医院 公司 电话 天气 早上 孩子 老师 便宜 重要 马上"
        ),
        "",
    ),
    "Japanese": (
        _words(
            "今日は 明日の 私たちが 計画を 時間に 友達と 仕事の 家族で 近くの "
            "おすすめの 簡単な 便利な 値段を "
            "週末に 旅行の 勉強を 予定が 問題を 方法で 手伝って スーパーで 晩ごはんを 病院に 会社の 天気が "
            "朝に 子どもと 先生に 安い 大切な すぐに したいです ください ですね ありがとう ました"
        ),
        "",
    ),
    "Thai": (
        _words(
            "วันนี้ พรุ่งนี้ พวกเรา ต้องการ แผน เวลา เพื่อน งาน ครอบครัว ใกล้ๆ แนะนำ ง่าย สะดวก ราคา "
            "เปรียบเทียบ เตรียม สุดสัปดาห์ เที่ยว เรียน นัด ปัญหา วิธี ช่วย ตลาด อาหารเย็น โรงพยาบาล บริษัท "
            "โทรศัพท์ อากาศ ตอนเช้า ลูก ครู ถูก สำคัญ ทันที อยาก ครับ ค่ะ ขอบคุณ"
        ),
        "",
    ),
    "Korean": (
        _words(
            "오늘 내일 우리 필요한 계획 시간 친구 일 가족 근처 추천 간단한 편리한 가격 비교 준비 주말 여행 "
            "공부 일정 문제 방법 도와주세요 시장 저녁 병원 회사 전화 날씨 아침 아이 선생님 중요한 바로 좋아요"
        ),
        " ",
    ),
    "Arabic": (
        _words(
            "اليوم غدا نحن نحتاج خطة وقت صديق عمل عائلة قريب أنصح سهل مريح سعر مقارنة تحضير عطلة سفر دراسة "
            "موعد مشكلة طريقة مساعدة سوق عشاء مستشفى شركة هاتف طقس صباح أطفال معلم رخيص مهم فورا أريد جميل"
        ),
        " ",
    ),
    "Russian": (
        _words(
            "сегодня завтра мы нужно план время друг работа семья рядом советую просто удобно цена сравнить "
            "подготовить выходные поездка учёба встреча проблема способ помочь магазин ужин больница компания"
            " "
            "телефон погода утром дети учитель дешево важно сразу хочу хороший"
        ),
        " ",
    ),
    "Hindi": (
        _words(
            "आज कल हम ज़रूरत योजना समय पास सुझाव कीमत छुट्टी पढ़ाई मदद बाज़ार खाना फ़ोन मौसम सुबह "
            "शिक्षक सस्ता ज़रूरी तुरंत है हैं के का में को से और मैं आप यह घर जाना अच्छा लेकिन भी "
            "बहुत थोड़ा कैसे कहाँ क्यों अभी यहाँ वहाँ बताइए हूँ थी रहा चाहता चाहती गया दीजिए "
            "ज़्यादा कौन जब तब अगर लिए बाद पहले जल्दी पैसे चाय सब्ज़ी हफ़्ता साल दिन शाम गाड़ी माँ "
            "भाई बहन बेटा स्कूल दफ़्तर"
        ),
        " ",
    ),
    "Spanish": (
        _words(
            "hoy mañana nosotros necesito plan tiempo amigo trabajo familia cerca recomiendo fácil cómodo "
            "precio "
            "comparar preparar viaje estudio cita problema manera ayuda mercado cena hospital empresa "
            "teléfono "
            "niños profesor barato importante ahora quiero gracias bueno grande para"
        ),
        " ",
    ),
    "German": (
        _words(
            "heute morgen wir brauche Plan Zeit Freund Arbeit Familie nahe empfehle einfach bequem Preis "
            "vergleichen vorbereiten Wochenende Reise lernen Termin Problem Hilfe Markt Abendessen "
            "Krankenhaus "
            "Firma Telefon Wetter Kinder Lehrer günstig wichtig sofort möchte danke gut"
        ),
        " ",
    ),
    "French": (
        _words(
            "aujourd'hui demain nous besoin plan temps ami travail famille près conseille facile pratique "
            "prix "
            "comparer préparer voyage étude rendez-vous problème façon aide marché dîner hôpital entreprise "
            "téléphone météo enfants professeur important veux merci bon grand"
        ),
        " ",
    ),
    "Portuguese": (
        _words(
            "hoje amanhã nós preciso plano tempo amigo trabalho família perto recomendo fácil prático preço "
            "comparar preparar viagem estudo consulta problema jeito ajuda mercado jantar hospital empresa "
            "telefone manhã crianças professor barato importante agora quero obrigado"
        ),
        " ",
    ),
    "Italian": (
        _words(
            "oggi domani noi bisogno piano tempo amico lavoro famiglia vicino consiglio facile comodo prezzo "
            "confrontare preparare viaggio studio appuntamento problema modo aiuto mercato cena ospedale "
            "azienda "
            "telefono mattina bambini insegnante economico importante subito voglio grazie"
        ),
        " ",
    ),
    "Dutch": (
        _words(
            "vandaag morgen wij nodig plan tijd vriend werk familie dichtbij aanraden makkelijk handig prijs "
            "vergelijken voorbereiden weekend reis studie afspraak probleem manier hulp markt avondeten "
            "ziekenhuis "
            "bedrijf telefoon weer ochtend kinderen leraar goedkoop belangrijk bedankt"
        ),
        " ",
    ),
    "Swedish": (
        _words(
            "idag imorgon vi behöver plan tid vän arbete familj nära rekommenderar enkel bekväm pris jämföra "
            "förbereda helgen resa studier möte problem sätt hjälp marknad middag sjukhus företag telefon "
            "väder "
            "barn lärare billig viktig genast vill tack bra"
        ),
        " ",
    ),
    "Polish": (
        _words(
            "dzisiaj jutro my potrzebuję plan czas przyjaciel praca rodzina blisko polecam łatwy wygodny cena"
            " "
            "porównać przygotować weekend podróż nauka spotkanie problem sposób pomoc targ kolacja szpital "
            "firma "
            "telefon pogoda rano dzieci nauczyciel tani ważny chcę dziękuję dobry"
        ),
        " ",
    ),
    "Turkish": (
        _words(
            "bugün yarın biz gerekiyor plan zaman arkadaş iş aile yakın öneririm kolay rahat fiyat "
            "karşılaştırmak "
            "hazırlamak yolculuk ders randevu sorun yol yardım pazar akşam yemeği hastane şirket telefon hava"
            " "
            "sabah çocuklar öğretmen ucuz önemli hemen istiyorum teşekkürler"
        ),
        " ",
    ),
    "Vietnamese": (
        _words(
            "hôm nay ngày mai chúng tôi cần kế hoạch thời gian bạn bè công việc gia đình gần giới thiệu dễ "
            "tiện "
            "giá so sánh chuẩn bị cuối tuần du lịch học cuộc hẹn vấn đề cách giúp chợ bữa tối bệnh viện"
        ),
        " ",
    ),
    "Indonesian": (
        _words(
            "hari ini besok kami perlu rencana waktu teman kerja keluarga dekat sarankan mudah nyaman harga "
            "bandingkan siapkan akhir pekan perjalanan belajar janji masalah cara bantuan pasar makan malam "
            "rumah sakit perusahaan telepon cuaca pagi guru murah penting segera ingin"
        ),
        " ",
    ),
    "Swahili": (
        _words(
            "sisi nahitaji mpango wakati kazi watoto mwalimu muhimu wa kwa ni mji ndiyo kusafiri "
            "kwenda wewe mwaka kwamba tayari katika kwenye lugha pamoja mwanangu kuhusu kuna kikuu "
            "kulala ninahitaji wanahitaji wanafanya kupata kutafuta kusikia kuelewa mwanafunzi "
            "walimu nchi za mzee"
        ),
        " ",
    ),
    "Bengali": (
        _words(
            "আজ কাল আমরা দরকার পরিকল্পনা সময় বন্ধু কাজ পরিবার কাছে সুপারিশ সহজ সুবিধা দাম তুলনা "
            "প্রস্তুতি ছুটি ভ্রমণ পড়াশোনা দেখা সমস্যা উপায় সাহায্য বাজার রাতের খাবার হাসপাতাল "
            "অফিস ফোন আবহাওয়া সকালে বাচ্চারা শিক্ষক সস্তা জরুরি এখনই চাই ধন্যবাদ ভালো আমার আমি "
            "তুমি আপনি কী কেন কোথায় এবং কিন্তু না হ্যাঁ আছে করতে যেতে বাড়ি শহর সপ্তাহ"
        ),
        " ",
    ),
    "Tamil": (
        _words(
            "இன்று நாளை நாங்கள் வேண்டும் திட்டம் நேரம் நண்பர் வேலை குடும்பம் அருகில் பரிந்துரை "
            "எளிது வசதி விலை ஒப்பிடு தயார் வார இறுதி பயணம் படிப்பு சந்திப்பு பிரச்சனை வழி உதவி "
            "சந்தை இரவு உணவு மருத்துவமனை நிறுவனம் தொலைபேசி வானிலை காலையில் குழந்தைகள் ஆசிரியர் "
            "மலிவு முக்கியம் உடனே நன்றி நல்ல நான் எனக்கு நீங்கள் என்ன எப்படி எங்கே மற்றும் இல்லை "
            "ஆமாம் வீடு நகரம் செய்ய போக பார்க்க"
        ),
        " ",
    ),
    "Telugu": (
        _words(
            "ఈరోజు రేపు మేము అవసరం ప్రణాళిక సమయం స్నేహితుడు పని కుటుంబం దగ్గర సిఫార్సు సులభం "
            "సౌకర్యం ధర పోల్చండి సిద్ధం వారాంతం ప్రయాణం చదువు సమావేశం సమస్య మార్గం సహాయం మార్కెట్ "
            "రాత్రి భోజనం ఆసుపత్రి కంపెనీ ఫోన్ వాతావరణం ఉదయం పిల్లలు ఉపాధ్యాయుడు చౌక ముఖ్యం వెంటనే "
            "కావాలి ధన్యవాదాలు మంచి నేను నాకు మీరు ఏమిటి ఎలా ఎక్కడ మరియు లేదు అవును ఇల్లు నగరం "
            "చేయాలి వెళ్ళాలి"
        ),
        " ",
    ),
    "Marathi": (
        _words(
            "आज उद्या आम्ही गरज योजना वेळ जवळ सोपे सोयीचे किंमत अभ्यास भेट समस्या मार्ग मदत बाजार "
            "रुग्णालय फोन हवामान सकाळी मुले शिक्षक स्वस्त महत्त्वाचे हवे धन्यवाद चांगले मी मला "
            "तुम्ही कुठे आणि नाही हो आहे आहेत करायचे जायचे आमच्या तुमच्या मध्ये तुम्हाला आम्हाला "
            "पाहिजे कृपया सांगा होते होती येथे तिथे केव्हा म्हणून आता नंतर आधी लवकर शाळा पाणी चहा "
            "भाजी पोळी आठवडा महिना दिवस संध्याकाळी आई वडील भाऊ बहीण मुलगा"
        ),
        " ",
    ),
    "Gujarati": (
        _words(
            "આજે કાલે અમે જરૂર યોજના સમય મિત્ર કામ પરિવાર નજીક ભલામણ સરળ અનુકૂળ કિંમત સરખામણી "
            "તૈયારી રજા પ્રવાસ અભ્યાસ મુલાકાત સમસ્યા રસ્તો મદદ બજાર જમવાનું હોસ્પિટલ કંપની ફોન "
            "હવામાન સવારે બાળકો શિક્ષક સસ્તું મહત્વનું તરત જોઈએ આભાર સારું હું મને તમે શું કેવી "
            "રીતે ક્યાં અને નથી હા છે ઘર શહેર કરવું જવું માટે"
        ),
        " ",
    ),
    "Kannada": (
        _words(
            "ಇಂದು ನಾಳೆ ನಾವು ಬೇಕು ಯೋಜನೆ ಸಮಯ ಸ್ನೇಹಿತ ಕೆಲಸ ಕುಟುಂಬ ಹತ್ತಿರ ಶಿಫಾರಸು ಸುಲಭ ಅನುಕೂಲ ಬೆಲೆ "
            "ಹೋಲಿಸಿ ತಯಾರಿ ವಾರಾಂತ್ಯ ಪ್ರಯಾಣ ಓದು ಭೇಟಿ ಸಮಸ್ಯೆ ದಾರಿ ಸಹಾಯ ಮಾರುಕಟ್ಟೆ ರಾತ್ರಿ ಊಟ ಆಸ್ಪತ್ರೆ "
            "ಕಂಪನಿ ಫೋನ್ ಹವಾಮಾನ ಬೆಳಿಗ್ಗೆ ಮಕ್ಕಳು ಶಿಕ್ಷಕ ಅಗ್ಗ ಮುಖ್ಯ ತಕ್ಷಣ ಬೇಕಾಗಿದೆ ಧನ್ಯವಾದಗಳು ಒಳ್ಳೆಯ "
            "ನಾನು ನನಗೆ ನೀವು ಏನು ಹೇಗೆ ಎಲ್ಲಿ ಮತ್ತು ಇಲ್ಲ ಹೌದು ಮನೆ ನಗರ ಮಾಡಬೇಕು ಹೋಗಬೇಕು"
        ),
        " ",
    ),
    "Malayalam": (
        _words(
            "ഇന്ന് നാളെ ഞങ്ങൾ ആവശ്യം പദ്ധതി സമയം സുഹൃത്ത് ജോലി കുടുംബം അടുത്ത് ശുപാർശ എളുപ്പം "
            "സൗകര്യം വില താരതമ്യം തയ്യാറെടുപ്പ് വാരാന്ത്യം യാത്ര പഠനം കൂടിക്കാഴ്ച പ്രശ്നം വഴി സഹായം "
            "ചന്ത അത്താഴം ആശുപത്രി കമ്പനി ഫോൺ കാലാവസ്ഥ രാവിലെ കുട്ടികൾ അധ്യാപകൻ വിലകുറഞ്ഞ പ്രധാനം "
            "ഉടനെ വേണം നന്ദി നല്ല ഞാൻ എനിക്ക് നിങ്ങൾ എന്ത് എങ്ങനെ എവിടെ പിന്നെ ഇല്ല അതെ വീട് നഗരം "
            "ചെയ്യണം പോകണം"
        ),
        " ",
    ),
    "Odia": (
        _words(
            "ଆଜି କାଲି ଆମେ ଦରକାର ଯୋଜନା ସମୟ ବନ୍ଧୁ କାମ ପରିବାର ପାଖରେ ପରାମର୍ଶ ସହଜ ସୁବିଧା ଦାମ ତୁଳନା "
            "ପ୍ରସ୍ତୁତି ଛୁଟି ଯାତ୍ରା ପଢ଼ା ସାକ୍ଷାତ ସମସ୍ୟା ଉପାୟ ସାହାଯ୍ୟ ବଜାର ରାତି ଖାଇବା ଡାକ୍ତରଖାନା "
            "କମ୍ପାନୀ ଫୋନ ପାଣିପାଗ ସକାଳେ ପିଲାମାନେ ଶିକ୍ଷକ ଶସ୍ତା ଜରୁରୀ ତୁରନ୍ତ ଚାହୁଁଛି ଧନ୍ୟବାଦ ଭଲ ମୁଁ "
            "ମୋତେ ଆପଣ କଣ କିପରି କେଉଁଠି ଏବଂ ନାହିଁ ହଁ ଅଛି ଘର ସହର କରିବା ଯିବା"
        ),
        " ",
    ),
    "Punjabi": (
        _words(
            "ਅੱਜ ਕੱਲ੍ਹ ਅਸੀਂ ਲੋੜ ਯੋਜਨਾ ਸਮਾਂ ਦੋਸਤ ਕੰਮ ਪਰਿਵਾਰ ਨੇੜੇ ਸੁਝਾਅ ਆਸਾਨ ਸੌਖਾ ਕੀਮਤ ਤੁਲਨਾ ਤਿਆਰੀ "
            "ਛੁੱਟੀ ਸਫ਼ਰ ਪੜ੍ਹਾਈ ਮੁਲਾਕਾਤ ਸਮੱਸਿਆ ਤਰੀਕਾ ਮਦਦ ਬਾਜ਼ਾਰ ਖਾਣਾ ਹਸਪਤਾਲ ਕੰਪਨੀ ਫ਼ੋਨ ਮੌਸਮ ਸਵੇਰੇ "
            "ਬੱਚੇ ਅਧਿਆਪਕ ਸਸਤਾ ਜ਼ਰੂਰੀ ਤੁਰੰਤ ਚਾਹੀਦਾ ਧੰਨਵਾਦ ਚੰਗਾ ਮੈਂ ਮੈਨੂੰ ਤੁਸੀਂ ਕੀ ਕਿਵੇਂ ਕਿੱਥੇ ਅਤੇ "
            "ਨਹੀਂ ਹਾਂ ਹੈ ਘਰ ਸ਼ਹਿਰ ਕਰਨਾ ਜਾਣਾ ਲਈ"
        ),
        " ",
    ),
    "Urdu": (
        _words(
            "آج کل ہم منصوبہ وقت کام خاندان مشورہ آسان موازنہ چھٹی سفر پڑھائی ملاقات مسئلہ طریقہ "
            "مدد بازار ہسپتال فون موسم صبح بچے سستا ضروری چاہیے شکریہ اچھا میں مجھے کیا کیسے اور "
            "نہیں ہاں ہے ہیں کے کی کا کو سے شہر کرنا جانا لیے یہ وہ ہمیں چاہتا ہوں تھا تھی گے بہت "
            "بھی کیونکہ تک کچھ سب کیوں یہاں وہاں بتائیں کریں دیکھیں بچوں دفتر ڈاکٹر ٹرین پیسے چائے "
            "روٹی ہفتہ مہینہ سال رات شام اسکول ہوگا رہا رہی"
        ),
        " ",
    ),
    "Catalan": (
        _words(
            "avui demà necessito feina gràcies vull molt també això aquest aquesta aquí allà perquè "
            "però amb sense setmana dissabte diumenge sopar esmorzar metge botiga cotxe aigua llet "
            "pa menjar beure fer anar venir poder dir parlar escriure llegir comprar pagar "
            "treballar estudiar viatjar dia bona nit ja encara potser només cada totes res bastant "
            "petit gran nou vell millor fill pare germà germana escola ciutat poble carrer muntanya "
            "matí tarda vespre any anys setmanes col·legi fins llibre ell senyor caixa mateix "
            "aleshores pregunta telèfon viatge mercat"
        ),
        " ",
    ),
    "Galician": (
        _words(
            "mañá grazas quero moi moito tamén iso aquí pero coa cunha unha dunha nunha polo pola "
            "luns xoves cear médico tenda tren diñeiro facer ver mercar axudar traballar xa aínda "
            "quizais cada pequeno vello mellor irmán rúa praia xente cousa cousas neno nena avoa "
            "imos teño podemos fago esa máis moitas mentres cando canto miña túa súa noso lle "
            "ningunha algunha xeito axuda viaxe despois xaneiro xuño xullo igrexa coñecer xogar"
        ),
        " ",
    ),
    "Basque": (
        _words(
            "bihar etzi atzo zuek haiek nik zuk behar dut dugu duzu da dira naiz zara dute izan "
            "egin etorri ikusi edan erosi ordaindu lagundu ikasi bidaiatu esan nahi ezin eskerrik "
            "mesedez egun on arratsalde bai ez eta edo ere oso gutxi dena ezer agian bakarrik etxea "
            "etxean etxera hiria herria hondartza mendia ogia afaria bazkaria dirua denda trena "
            "medikua eskola ikastetxea lana lantokia anaia ahizpa semea umeak haurrak astea "
            "larunbata arratsaldean eguraldia eguzkia hotza txikia berria erraza zaila "
            "garrantzitsua laster gero lehen zer noiz zein zenbat nire zure gure bere nirekin "
            "zurekin gurekin plana modua laguntza merkatua prezioa hitzordua irakaslea gomendatzen "
            "prestatu"
        ),
        " ",
    ),
    "Welsh": (
        _words(
            "ti yn y gyda wrth drwy hefyd roedd bydd byddwn gallwch eisiau gwybod gweld dod prynu "
            "bwyta darllen ysgrifennu cymraeg saesneg bwyd llaeth arian siop bws ysgol swyddfa tref "
            "pentref traeth mynydd teulu brawd ffrindiau ffrind dydd tywydd oer mawr newydd gwell "
            "braf rhad pwysig nawr yma yno sut croeso iawn dim cyfleus cymharu paratoi penwythnos "
            "taith apwyntiad ffordd"
        ),
        " ",
    ),
}
_DIRECTIVE = re.compile(
    r"\b(?:[Ww]rite|[Rr]eply|[Aa]nswer)\b[^\n]*?\bin (English|" + "|".join(_LEXICONS) + r")\b"
)


def target_language(body: dict[str, Any]) -> str | None:
    """The language the request's last directive asks for ("Write ... in Thai"), when the fake knows it."""
    messages = body.get("messages")
    if isinstance(messages, list):
        text = "\n".join(_message_text(m.get("content")) for m in messages if isinstance(m, dict))
    else:
        text = str(body.get("prompt") or "")
    found = _DIRECTIVE.findall(text)
    return found[-1] if found and found[-1] in _LEXICONS else None


def _sha256_seed(*parts: Any) -> int:
    """Stable 64-bit seed from JSON-able parts (hash() is salted per process)."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(blob.encode("utf-8")).digest()[:8], "big")


def _message_text(content: Any) -> str:
    """Text of a message content, which may be a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def _request_words(text: str) -> list[str]:
    """Content words of the user's text, to echo into replies.

    When the text quotes material (a request to rewrite, a message to judge), the echo comes from the
    first quoted passage, as a model's answer would: it is what the task is about.
    """
    quoted = re.findall(r'"([^"]{20,})"', text)
    words = re.findall(r"[A-Za-z][A-Za-z'-]{3,}", quoted[0] if quoted else text)
    seen: dict[str, None] = {}
    for w in words:
        lw = w.lower().strip("'-")
        if lw not in _STOPWORDS and len(lw) <= 20:
            seen.setdefault(lw, None)
    return list(seen)


def _word_count(text: str) -> int:
    return max(1, len(text.split()))


# --------------------------------------------------------------------------- #
# Text generation
# --------------------------------------------------------------------------- #
class TextGen:
    """Phrase generator driven by an injected RNG (deterministic per request)."""

    def __init__(self, rng: random.Random, topic_words: list[str]) -> None:
        self.rng = rng
        self.topic = topic_words

    def _noun(self) -> str:
        # Echo request words now and then so replies visibly depend on the prompt.
        if self.topic and self.rng.random() < 0.3:
            return self.rng.choice(self.topic)
        return self.rng.choice(_NOUNS)

    def _clause(self) -> list[tuple[str, bool]]:
        """Subject-verb-object clause as (word, may_end_here) pairs."""
        r = self.rng
        words = [(r.choice(_DETERMINERS), False)]
        if r.random() < 0.7:
            words.append((r.choice(_ADJECTIVES), False))
        words.append((self._noun(), False))
        if r.random() < 0.35:
            words.append((r.choice(_ADVERBS), False))
        words += [(r.choice(_VERBS), False), ("the", False)]
        if r.random() < 0.5:
            words.append((r.choice(_ADJECTIVES), False))
        words.append((self._noun(), True))
        if r.random() < 0.6:
            words += [(r.choice(_PREPOSITIONS), False), ("the", False), (self._noun(), True)]
        return words

    def phrase(self, lo: int = 6, hi: int = 16) -> str:
        """An English-looking phrase of about lo..hi words, no final period."""
        target = self.rng.randint(lo, hi)
        marked = self._clause()
        while len(marked) < target:
            marked += [(self.rng.choice(_CONNECTORS), False), *self._clause()]
        # Cut at the last clean ending (after an object noun) within the target,
        # so phrases never end on "the" or "although".
        ends = [i for i, (_, ok) in enumerate(marked) if ok and i < target]
        words = [w for w, _ in marked[: (ends[-1] if ends else len(marked) - 1) + 1]]
        if self.topic and not any(w in self.topic for w in words) and self.rng.random() < 0.5:
            words += ["about", self.rng.choice(self.topic)]
        # Fix the article before a vowel ("a airport" -> "an airport").
        words = [
            "an" if w == "a" and nxt[:1] in "aeiou" else w
            for w, nxt in zip(words, [*words[1:], ""], strict=True)
        ]
        text = " ".join(words)
        return text[0].upper() + text[1:]

    def sentences(self, n: int) -> str:
        return " ".join(self.phrase(7, 16) + "." for _ in range(n))


class LexiconGen(TextGen):
    """Phrases of another language's everyday words (`_LEXICONS`), in random order."""

    def __init__(self, rng: random.Random, language: str) -> None:
        super().__init__(rng, [])
        self.words, self.joiner = _LEXICONS[language]

    def phrase(self, lo: int = 6, hi: int = 16) -> str:
        text = self.joiner.join(self.rng.choice(self.words) for _ in range(self.rng.randint(lo, hi)))
        return text[0].upper() + text[1:]

    def sentences(self, n: int) -> str:
        end = "。" if not self.joiner else "."
        return " ".join(self.phrase(7, 16) + end for _ in range(n))


# --------------------------------------------------------------------------- #
# JSON-schema driven value generation
# --------------------------------------------------------------------------- #
class SchemaFaker:
    """A value that validates against a JSON schema as pydantic v2 writes one (`model_json_schema()`):
    objects, arrays, strings (date and date-time formats), numbers, booleans, enums, `anyOf` (Optional),
    local `$ref`s (recursive models end at MAX_DEPTH). What the response models do not use is not faked."""

    def __init__(self, root: dict[str, Any], gen: TextGen) -> None:
        self.root = root
        self.gen = gen
        self.rng = gen.rng
        self._ref_stack: list[str] = []

    def generate(self) -> Any:
        return self.value(self.root, depth=0)

    def _resolve(self, schema: Any) -> dict[str, Any]:
        """Follow local $refs so callers see one plain dict."""
        if not isinstance(schema, dict):
            return {}  # `true` / `false` schemas: anything goes
        for _ in range(32):  # bounded: protects against ref cycles
            ref = schema.get("$ref")
            if not isinstance(ref, str) or not ref.startswith("#"):
                break
            target: Any = self.root
            for part in ref.lstrip("#/").split("/"):
                if part:
                    target = target.get(part, {})
            # Sibling keywords next to $ref (e.g. description/default) still apply.
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return schema

    def value(self, schema: Any, depth: int) -> Any:
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if ref is None:
            return self._value(schema, depth)
        if ref in self._ref_stack:
            depth = MAX_DEPTH  # recursive model: emit the smallest valid instance
        self._ref_stack.append(ref)
        try:
            return self._value(schema, depth)
        finally:
            self._ref_stack.pop()

    def _value(self, schema: Any, depth: int) -> Any:
        s = self._resolve(schema)
        if s.get("enum"):
            return self.rng.choice(s["enum"])
        if "anyOf" in s:
            options = [self._resolve(o) for o in s["anyOf"]]
            non_null = [o for o in options if o.get("type") != "null"]
            # Optional[...] fields get a real value (more useful to test) unless we
            # are deep inside a recursive structure, where null ends the recursion.
            if not non_null or (depth >= MAX_DEPTH and len(non_null) < len(options)):
                return None
            return self.value(self.rng.choice(non_null), depth)
        handler = getattr(self, f"_gen_{s.get('type', 'string')}", None)
        return self.gen.phrase() if handler is None else handler(s, depth)

    def _gen_null(self, s: dict[str, Any], depth: int) -> None:
        return None

    def _gen_boolean(self, s: dict[str, Any], depth: int) -> bool:
        return self.rng.random() < 0.5

    def _gen_object(self, s: dict[str, Any], depth: int) -> dict[str, Any]:
        required = set(s.get("required") or [])
        return {
            name: self.value(sub, depth + 1)
            for name, sub in (s.get("properties") or {}).items()
            if depth < MAX_DEPTH or name in required  # keep recursive structures finite
        }

    def _gen_array(self, s: dict[str, Any], depth: int) -> list[Any]:
        lo = int(s.get("minItems", 0))
        hi = int(s.get("maxItems", max(lo, 3)))
        if depth >= MAX_DEPTH:
            n = lo
        else:
            n = self.rng.randint(max(lo, min(1, hi)), max(lo, min(hi, max(lo, 3))))
        return [self.value(s.get("items", {}), depth + 1) for _ in range(n)]

    @staticmethod
    def _bounds(s: dict[str, Any]) -> tuple[float | None, float | None, bool, bool]:
        """(lo, hi, lo_exclusive, hi_exclusive)."""
        lo, hi = s.get("minimum"), s.get("maximum")
        lo_ex = hi_ex = False
        emin, emax = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
        if emin is not None and (lo is None or emin >= lo):
            lo, lo_ex = emin, True
        if emax is not None and (hi is None or emax <= hi):
            hi, hi_ex = emax, True
        return lo, hi, lo_ex, hi_ex

    def _gen_integer(self, s: dict[str, Any], depth: int) -> int:
        lo_f, hi_f, lo_ex, hi_ex = self._bounds(s)
        lo = None if lo_f is None else (math.floor(lo_f) + 1 if lo_ex else math.ceil(lo_f))
        hi = None if hi_f is None else (math.ceil(hi_f) - 1 if hi_ex else math.floor(hi_f))
        if lo is None and hi is None:
            lo, hi = 0, 100
        elif lo is None:
            lo = hi - 100
        elif hi is None:
            hi = lo + 100
        return lo if hi < lo else self.rng.randint(lo, hi)

    def _gen_number(self, s: dict[str, Any], depth: int) -> float:
        lo, hi, lo_ex, hi_ex = self._bounds(s)
        if lo is None and hi is None:
            lo, hi = 0.0, 100.0
        elif lo is None:
            lo = hi - 100.0
        elif hi is None:
            hi = lo + 100.0
        # Stay off exclusive edges by sampling from the inner 90%.
        u = self.rng.uniform(0.05, 0.95) if (lo_ex or hi_ex) else self.rng.random()
        v = lo + (hi - lo) * u
        rounded = round(v, 2)
        ok = (rounded > lo if lo_ex else rounded >= lo) and (rounded < hi if hi_ex else rounded <= hi)
        return rounded if ok else v

    def _gen_string(self, s: dict[str, Any], depth: int) -> str:
        r = self.rng
        day = dt.date(1950, 1, 1) + dt.timedelta(days=r.randint(0, 80 * 365))  # drawn for every string
        if s.get("format") == "date":
            text = day.isoformat()
        elif s.get("format") == "date-time":
            hms = r.randint(0, 23), r.randint(0, 59), r.randint(0, 59)
            text = dt.datetime(day.year, day.month, day.day, *hms).isoformat() + "Z"
        else:
            text = self.gen.phrase()
        return self._fit_length(text, s)

    def _fit_length(self, text: str, s: dict[str, Any]) -> str:
        lo = int(s.get("minLength", 0))
        hi = s.get("maxLength")
        while len(text) < lo:
            text += " " + self.rng.choice(_NOUNS)
        if isinstance(hi, int) and len(text) > hi:
            cut = text[:hi]
            space = cut.rfind(" ")
            # Prefer a word boundary when it still satisfies minLength.
            if space >= max(lo, 1) and not text[hi : hi + 1].isspace():
                cut = cut[:space]
            text = cut.rstrip() if len(cut.rstrip()) >= lo else cut
            text = self._drop_dangling(text, lo)
        return text

    @staticmethod
    def _drop_dangling(text: str, lo: int) -> str:
        """Remove trailing "the"/adjectives left by a cut, keeping minLength."""
        words = text.split(" ")
        while len(words) > 1 and words[-1].lower() in _DANGLING:
            shorter = " ".join(words[:-1])
            if len(shorter) < lo:
                break
            words.pop()
        return " ".join(words)


# --------------------------------------------------------------------------- #
# Request interpretation
# --------------------------------------------------------------------------- #
def extract_schema(body: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """(json_mode, schema) from an OpenAI or llama.cpp style request."""
    rf = body.get("response_format")
    if isinstance(rf, dict):
        if rf.get("type") == "json_schema":
            js = rf.get("json_schema") or {}
            return True, js.get("schema") if isinstance(js.get("schema"), dict) else {}
        if rf.get("type") == "json_object":
            schema = rf.get("schema")
            return True, schema if isinstance(schema, dict) else None
    if isinstance(body.get("json_schema"), dict):  # llama.cpp top-level field
        return True, body["json_schema"]
    return False, None


class Request(dict[str, Any]):
    """A request's JSON body as responders get it (and `fake.requests` records it), with `call`: the call
    its CALL_HEADER names (None: a request without one, e.g. a raw test's)."""

    def __init__(self, body: dict[str, Any], call: str | None = None) -> None:
        super().__init__(body)
        self.call = call


def call_of(body: dict[str, Any]) -> str | None:
    """The call a request body names (a `Request`'s header), else None."""
    return getattr(body, "call", None)


@cache
def _declared() -> dict[str, Any]:
    from personaloom.pipeline import all_calls  # on first use: the standalone server never needs it

    return {c.name: c for c in all_calls()}


def response_model(call: str | None) -> type[BaseModel] | None:
    """The response model the call `call` declares (None: no such call, a plain-text call, or a model
    computed per input, which only the request's schema shows)."""
    declared = _declared().get(call) if call else None
    model = declared.response if declared is not None else None
    return model if isinstance(model, type) else None


Responder = Callable[[dict[str, Any]], str | None]
# A scripted role: the fields of its answer (made into the call's response model), the reply text as is,
# or None to pass the request on
Role = Callable[[Request], "dict[str, Any] | str | None"]


def scripted(roles: Mapping[str, Role], then: Responder | None = None) -> Responder:
    """A responder: a request whose call (its CALL_HEADER) is one of `roles` gets that role's answer; any
    other request, or one its role passes on, goes to `then` (None: the fake's own schema-driven answer)."""

    def reply(body: dict[str, Any]) -> str | None:
        call = call_of(body)
        role = roles.get(call) if call is not None else None
        got = role(body) if role is not None else None  # type: ignore[arg-type]  # a Request: it has a call
        if got is None:
            return then(body) if then is not None else None
        return got if isinstance(got, str) else model_answer(call, got)

    return reply


def model_answer(call: str | None, values: dict[str, Any]) -> str:
    """A role's answer as JSON: `values` as the call's response model holds them, in its field order (a
    model computed per input, or values it rejects: as given, as a model that wrote them would)."""
    model = response_model(call)
    if model is not None:
        try:
            values = model.model_validate(values).model_dump(mode="json")
        except ValidationError:
            pass
    return json.dumps(values)


def _check_faults(kinds: list[str]) -> None:
    """Typos in a fault name would silently mean "no fault"; fail loudly instead."""
    unknown = set(kinds) - {*DEFAULT_FAULTS, "ok"}
    if unknown:
        raise ValueError(f"unknown fault kinds: {sorted(unknown)}")


def _error_body(message: str, etype: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


@dataclass
class FakeStats:
    """Counters; `fake.stats` returns a snapshot copy (safe to read without locks)."""

    total: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)
    by_fault: dict[str, int] = field(default_factory=dict)
    chat_ok: int = 0  # chat completions answered 200 with no fault injected


@dataclass
class Reply:
    status: int
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    """Outcome of the shared completion flow."""

    fault: str | None
    error: Reply | None = None
    dropped: bool = False  # hang interrupted by stop(): close without replying
    content: str = ""
    finish: str = "stop"


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers live connections so stop() can cut them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # default 5 drops SYNs under 32+ concurrent connects

    def __init__(self, addr: tuple[str, int], fake: FakeOpenAI) -> None:
        self.fake = fake
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # broken pipes from timed-out clients are expected; stay quiet

    def close_all_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # header and body go out in separate writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: no per-request logging

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        raw = self._read_body()
        path = self.path.split("?", 1)[0].rstrip("/")
        # Lower-case names: HTTP headers are case-insensitive and httpx sends them so.
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.fake.handle(method, path, headers, raw)
        if reply is None:  # server is stopping: drop the connection
            self.close_connection = True
            return
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        if isinstance(reply.payload, (bytes, str)):
            data = reply.payload.encode() if isinstance(reply.payload, str) else reply.payload
        else:
            data = json.dumps(reply.payload).encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


# --------------------------------------------------------------------------- #
# The fake server
# --------------------------------------------------------------------------- #
class FakeOpenAI:
    """Fake OpenAI API server on a real loopback socket. See module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = DEFAULT_FAULTS,
        fault_schedule: list[str] | None = None,
        retry_after: float = 0.05,
        hang_seconds: float = 30.0,
        responder: Responder | None = None,
        known_models: set[str] | None = None,
        api_key: str | None = None,
        seed: int = 0,
    ) -> None:
        """Configure; nothing listens until start() / ``with``.

        faults: kinds drawn (seeded RNG) with probability fault_rate per chat or
        legacy-completion request. fault_schedule: exact faults ("ok" = none) for
        the first chat requests, before fault_rate applies. responder(body) may
        return the reply content; None falls through to the generated reply. `body` is a `Request`: its
        `call` is the call the request names (`scripted` keys roles by it).
        """
        _check_faults([*faults, *(fault_schedule or [])])
        self.host, self.port = host, port
        self.latency = latency
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.responder = responder
        self.known_models = set(known_models) if known_models is not None else None
        self.api_key = api_key
        self.seed = seed
        self._initial_schedule = list(fault_schedule or [])
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._reset_state()

    # -- lifecycle --------------------------------------------------------- #
    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop promptly: wake hanging handlers, cut live connections, free the port."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # hang faults wait on this event, so they return now
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not running; call start() or use `with`")
        return f"http://{self.host}:{self.port}/v1"

    # -- introspection ----------------------------------------------------- #
    def _reset_state(self) -> None:
        self._stats = FakeStats()
        self._requests: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED_REQUESTS)
        self._schedule = deque(self._initial_schedule)
        self._fault_rng = random.Random(self.seed)
        self._models_seen: set[str] = set()

    def reset(self) -> None:
        """Clear stats/requests and restart the fault RNG and schedule."""
        with self._lock:
            self._reset_state()

    @property
    def stats(self) -> FakeStats:
        with self._lock:
            return copy.deepcopy(self._stats)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recorded requests, oldest first: {"method","path","headers","body","time"}.

        Header names are lower-cased; ``body`` is the parsed JSON (None if invalid).
        """
        with self._lock:
            return list(self._requests)

    def _count(self, bucket: dict[Any, int], key: Any) -> None:
        bucket[key] = bucket.get(key, 0) + 1

    # -- request handling --------------------------------------------------- #
    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> Reply | None:
        """Entry point from the HTTP handler thread; returns None to drop the connection."""
        arrived = time.monotonic()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if isinstance(body, dict):
            body = Request(body, headers.get(CALL_HEADER.lower()))
        with self._lock:
            self._stats.total += 1
            self._count(self._stats.by_path, path)
            self._requests.append(
                {"method": method, "path": path, "headers": headers, "body": body, "time": time.time()}
            )
        reply, fault = self._route(method, path, headers, body)
        # The latency counts from the request's arrival, as an endpoint's does: the reply is made inside it
        # (its own ~1 ms of Python per reply would otherwise lower every rate measured against it)
        if (left := self.latency - (time.monotonic() - arrived)) > 0:
            time.sleep(left)
        if reply is None:
            return None
        with self._lock:
            self._count(self._stats.by_status, reply.status)
            if fault is not None:
                self._count(self._stats.by_fault, fault)
            elif reply.status == 200 and path.endswith("/chat/completions"):
                self._stats.chat_ok += 1
        return reply

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[Reply | None, str | None]:
        if self.api_key is not None and not self._authorized(headers):
            return Reply(
                401,
                _error_body(
                    "Incorrect API key provided. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                    "invalid_api_key",
                ),
            ), None
        path = path.removeprefix("/v1")
        if method == "GET" and path == "/models":
            return Reply(200, self._models_payload()), None
        routes = {
            "/chat/completions": self._chat,
            "/completions": self._completion,
            "/embeddings": self._embeddings,
        }
        if path not in routes:
            return Reply(
                404, _error_body(f"Unknown path {path}", "invalid_request_error", "unknown_url")
            ), None
        if method != "POST":
            return Reply(405, _error_body("Method not allowed", "invalid_request_error", None)), None
        if not isinstance(body, dict):
            return Reply(
                400,
                _error_body(
                    "We could not parse the JSON body of your request.", "invalid_request_error", None
                ),
            ), None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return Reply(
                400, _error_body("you must provide a model parameter", "invalid_request_error", None, "model")
            ), None
        if self.known_models is not None and model not in self.known_models:
            return Reply(
                404,
                _error_body(
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    "model_not_found",
                ),
            ), None
        with self._lock:
            self._models_seen.add(model)
        return routes[path](body)

    def _authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization", "") == f"Bearer {self.api_key}"

    def _models_payload(self) -> dict[str, Any]:
        with self._lock:
            names = sorted(
                self.known_models
                if self.known_models is not None
                else set(DEFAULT_MODELS) | self._models_seen
            )
        return {
            "object": "list",
            "data": [
                {"id": n, "object": "model", "created": 1_700_000_000, "owned_by": "fake-openai"}
                for n in names
            ],
        }

    # -- faults ------------------------------------------------------------ #
    def _pick_fault(self, chat: bool) -> str | None:
        with self._lock:
            if chat and self._schedule:
                kind = self._schedule.popleft()
                return None if kind == "ok" else kind
            if self.fault_rate > 0 and self.faults and self._fault_rng.random() < self.fault_rate:
                return self._fault_rng.choice(self.faults)
        return None

    def _error_fault(self, fault: str | None) -> Reply | None:
        """Faults that replace the answer entirely (429/500); None otherwise."""
        if fault == "429":
            ms = int(self.retry_after * 1000)
            return Reply(
                429,
                _error_body(
                    "Rate limit reached for requests. Please try again shortly.",
                    "requests",
                    "rate_limit_exceeded",
                ),
                {"Retry-After": f"{self.retry_after:g}", "retry-after-ms": str(ms)},
            )
        if fault == "500":
            return Reply(
                500,
                _error_body(
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                    None,
                ),
            )
        return None

    def _wait_hang(self) -> bool:
        """Sleep hang_seconds; False if the server is stopping (drop the request)."""
        return not self._stopping.wait(self.hang_seconds)

    @staticmethod
    def _mangle(content: str, fault: str | None) -> tuple[str, str]:
        """Apply a content-level fault; returns (content, finish_reason)."""
        if fault == "length":
            return content[: len(content) // 2], "length"
        if fault == "malformed":
            broken = content[: max(1, (len(content) * 3) // 5)]
            try:
                json.loads(broken)
                broken += '{"'  # still parseable by chance: force invalid JSON
            except ValueError:
                pass
            return broken, "stop"  # claims success: the nasty case for clients
        return content, "stop"

    # -- content ------------------------------------------------------------ #
    def generate_content(self, body: dict[str, Any], user_text: str, context: Any) -> tuple[str, str]:
        """Deterministic (content, finish_reason): responder first, then fakes."""
        if self.responder is not None:
            scripted = self.responder(body)
            if scripted is not None:
                return scripted, "stop"
        json_mode, schema = extract_schema(body)
        if json_mode and not schema and (model := response_model(call_of(body))) is not None:
            schema = model.model_json_schema()  # no schema sent: the one of the call's response model
        seed = _sha256_seed(self.seed, body.get("model"), context, schema, body.get("seed"))
        language = target_language(body)
        gen = (
            LexiconGen(random.Random(seed), language)
            if language is not None
            else TextGen(random.Random(seed), _request_words(user_text))
        )
        if schema:
            return json.dumps(SchemaFaker(schema, gen).generate(), ensure_ascii=False), "stop"
        if json_mode:
            return json.dumps({"answer": gen.phrase()}, ensure_ascii=False), "stop"
        words = gen.sentences(gen.rng.randint(1, 2)).split()
        # Honour max_tokens (tokens ~ words) for plain text only: cutting JSON
        # here would turn an ordinary request into a surprise fault.
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and 0 < limit < len(words):
            return " ".join(words[:limit]), "length"
        return " ".join(words), "stop"

    def _answer(self, body: dict[str, Any], chat: bool, user_text: str, context: Any) -> Answer:
        """Shared chat/legacy flow: pick a fault, then produce (maybe mangled) content."""
        fault = self._pick_fault(chat)
        err = self._error_fault(fault)
        if err is not None:
            return Answer(fault, error=err)
        if fault == "hang" and not self._wait_hang():
            return Answer(fault, dropped=True)
        content, finish = self.generate_content(body, user_text, context)
        if fault in ("length", "malformed"):
            content, finish = self._mangle(content, fault)
        return Answer(fault, content=content, finish=finish)

    def _chat(self, body: dict[str, Any]) -> tuple[Reply | None, str | None]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return Reply(
                400,
                _error_body("'messages' is a required property", "invalid_request_error", None, "messages"),
            ), None
        user_text = next(
            (
                _message_text(m.get("content"))
                for m in reversed(messages)
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            "",
        )
        ans = self._answer(body, True, user_text, messages)
        if ans.error is not None or ans.dropped:
            return ans.error, ans.fault
        content = ans.content
        prompt_tokens = sum(
            _word_count(_message_text(m.get("content"))) for m in messages if isinstance(m, dict)
        )
        rid = hashlib.sha256(f"{time.time_ns()}{content}".encode()).hexdigest()[:24]
        payload = {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": ans.finish,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                }
            ],
            "usage": self._usage(prompt_tokens, content),
        }
        return Reply(200, payload), ans.fault

    def _completion(self, body: dict[str, Any]) -> tuple[Reply | None, str | None]:
        prompt = body.get("prompt", "")
        text_in = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
        ans = self._answer(body, False, text_in, prompt)
        if ans.error is not None or ans.dropped:
            return ans.error, ans.fault
        content = ans.content
        rid = hashlib.sha256(f"{time.time_ns()}{content}".encode()).hexdigest()[:24]
        payload = {
            "id": f"cmpl-{rid}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "text": content, "logprobs": None, "finish_reason": ans.finish}],
            "usage": self._usage(_word_count(text_in), content),
        }
        return Reply(200, payload), ans.fault

    @staticmethod
    def _usage(prompt_tokens: int, content: str) -> dict[str, int]:
        completion = _word_count(content)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def _embeddings(self, body: dict[str, Any]) -> tuple[Reply, None]:
        raw = body.get("input", "")
        inputs = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)
        as_b64 = body.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(inputs):
            vec = embed(str(item))
            emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if as_b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = sum(_word_count(str(x)) for x in inputs)
        return Reply(
            200,
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        ), None


def embed(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """Deterministic unit vector for a string (independent of server state)."""
    rng = random.Random(_sha256_seed("embed", text))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


# --------------------------------------------------------------------------- #
# Standalone mode
# --------------------------------------------------------------------------- #
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fake OpenAI-compatible server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument(
        "--faults",
        default=",".join(DEFAULT_FAULTS),
        help="comma-separated subset of " + ",".join(DEFAULT_FAULTS),
    )
    p.add_argument("--retry-after", type=float, default=0.05)
    p.add_argument("--hang-seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=None)
    p.add_argument("--known-models", default=None, help="comma-separated model names")
    return p.parse_args(argv)


def spawn_fake(latency: float, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """The server in its own process (benchmarks: its CPU is not the client's): (process, base URL)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "personaloom.testing.fake_openai",
            "--port",
            "0",
            "--latency",
            str(latency),
            *extra,
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip().removeprefix("BASE_URL=")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    stop: list[int] = []
    # Handle SIGINT like SIGTERM so Ctrl-C exits cleanly without a traceback. A plain flag: an Event set
    # from the handler could deadlock, the handler running while this thread holds the Event's lock
    # inside `wait` (a SIGTERM then hung the process that waited for this server to exit).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _: stop.append(signum))
    fake = FakeOpenAI(
        host=args.host,
        port=args.port,
        latency=args.latency,
        fault_rate=args.fault_rate,
        faults=tuple(f for f in args.faults.split(",") if f),
        retry_after=args.retry_after,
        hang_seconds=args.hang_seconds,
        seed=args.seed,
        api_key=args.api_key,
        known_models=set(args.known_models.split(",")) if args.known_models else None,
    )
    with fake:
        print(f"BASE_URL={fake.base_url}", flush=True)
        while not stop:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
