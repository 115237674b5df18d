from tests.conftest import TwilioWebhook


def test_hola_gets_the_welcome_menu(twilio: TwilioWebhook, fake_twilio) -> None:
    response = twilio.sms("+525512345678", "hola")
    assert response.status_code == 200
    assert b"<Response/>" in response.data
    sent = fake_twilio.wait_for(1)
    assert sent[0].to == "+525512345678"
    assert "1) Ruta segura" in sent[0].body
